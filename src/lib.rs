//! glowd: Glow (Kingma & Dhariwal 2018) as infrastructure.
//!
//! Map of the crate:
//! - [`model`]: the flow itself on tch: layers (`actnorm`, `invconv`, `coupling`, `zero_conv`), `flow_step`,
//!   the multi-scale `glow` (encode / decode / sample), `config` presets and `weights` files. It names no tokio,
//!   Kafka or S3 type.
//! - [`imageio`]: reading images into the model's u8 planes and writing PNGs and grids.
//! - [`cli`]: the `glowd` command line; `main.rs` only calls [`cli::main`].
//! - [`bench`]: the `glowd bench` throughput figures.
//! - [`train`] and [`data`]: `glowd train` (objective, optimizer, checkpoints) and its dataset readers.
//! - [`cli_edit`]: the latent-editing commands (directions, edit, interpolate, resample, sheet).
//! - [`job`]: the daemon's job contract (schemas/job.v1.json), S3 key confinement, output keys, results and
//!   manifests; [`ack`]: the per-partition offset watermark that decides what may be committed. Both name no
//!   tokio, Kafka or tch type.
//! - [`worker`]: the device worker, the model/pipeline boundary: one OS thread per device owns the models and takes
//!   plain-data batches over a channel, answering each op on a oneshot.
//! - [`pipeline`]: the pipeline core (parse, fetch, decode, pull batcher, device, encode outputs, create-only
//!   writes, manifest, results, dead letters) behind `ObjectStore` and `Reporter` traits; its `embedded` mode
//!   (`glowd run`) reads a JSON-lines file and local folders. Names no tch type.
//! - [`daemon`]: `glowd serve`: pipeline files, the Kafka source and reporter, the S3 store, metrics and health.
pub mod ack;
pub mod bench;
pub mod cli;
pub mod cli_edit;
pub mod cli_pipeline;
pub mod cli_submit;
pub mod daemon;
pub mod data;
pub mod dataset;
pub mod imageio;
pub mod job;
pub mod model;
pub mod pipeline;
pub mod submit;
pub mod train;
pub mod worker;
