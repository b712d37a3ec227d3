//! glowd: Glow (Kingma & Dhariwal 2018) as infrastructure.
//!
//! Map of the crate, lowest room first (`tests/layout.rs` checks that no file imports another in a circle and that
//! each room names only the rooms below it; `docs/architecture.md` tells the whole story):
//! - [`disposition`]: what a caller does after an error (retry, dead-letter, fatal), shared by every room.
//! - [`codec`]: file formats shared by the CLI, the pipeline and the tools (images, latent files, GIFs).
//! - [`model`]: the flow itself on tch: layers, `flow_step`, the multi-scale `glow` (encode / decode / sample),
//!   configs, weights and directions. It names no tokio, Kafka or S3 type. [`train`] and [`data`] train it.
//! - [`job`]: the daemon's job contract (schemas/job.v1.json), the error catalogue, S3 key confinement, output keys,
//!   results and manifests. Serde only: no tch, tokio, Kafka or S3 type.
//! - [`settings`]: pipeline files, read by the daemon, the embedded mode and the tools.
//! - [`worker`]: the device worker, the model/pipeline boundary: one OS thread per device owns the models and takes
//!   plain-data batches over a channel, answering each op on a oneshot.
//! - [`pipeline`]: the pipeline core (parse, fetch, decode, pull batcher, device, encode outputs, create-only
//!   writes, manifest, results, dead letters) behind `ObjectStore` and `Reporter` traits. Names no tch type.
//! - [`kafka`] and [`s3`]: the adapters (jobs source, results and DLQ reporter, offset watermark; the S3 store).
//! - [`daemon`]: `glowd serve` (Kafka + S3, metrics and health) and the embedded mode `glowd run` (local folders).
//! - [`tools`]: the pure parts of `glowd submit` and `glowd dataset`.
//! - [`studio`]: `glowd studio`, a web page over the model (edits, interpolation, samples) and the runs (export,
//!   submit, progress); a room above the model and the pipeline, like [`daemon`].
//! - [`cli`]: the `glowd` command line, one file per command group; `main.rs` only calls [`cli::main`].
//!   [`bench`] prints `glowd bench`'s throughput figures.
pub mod bench;
pub mod cli;
pub mod codec;
pub mod daemon;
pub mod data;
pub mod disposition;
pub mod job;
pub mod kafka;
pub mod model;
pub mod pipeline;
pub mod precision;
pub mod s3;
pub mod settings;
pub mod studio;
pub mod tools;
pub mod train;
pub mod worker;
