//! What the integration tests share. Each test file declares `mod common;` and uses the part it needs, so every
//! test binary leaves some of this unused (hence the one `allow(dead_code)`).
//!
//! - `model`: a tiny model config, perturbed weights, random pixels, a brute-force log-determinant;
//! - `pipeline`: a tiny model with attribute directions, test images;
//! - `bin`: the `glowd` binary under test, as a `Command`;
//! - `daemon`: what the tests against the dev stack share (its variables, names, a `glowd serve` child, a Kafka
//!   reader), used by `tests/e2e_*.rs` and `tests/kafka_security.rs`;
//! - `e2e`: the plain dev stack's broker and MinIO as `tests/e2e_*.rs` use them (topics, objects, workloads, results);
//! - `fault_proxy`: an HTTP fault proxy in front of S3;
//! - `studio`: a studio in the test process, a held-out face, `glowd edit`'s output for it (`tests/studio_*.rs`);
//! - `deploy`: reading the deployment artefacts and the facts of the code they deploy (`tests/deploy_*.rs`).
#![allow(dead_code)]
pub mod bin;
pub mod daemon;
pub mod deploy;
pub mod e2e;
pub mod fault_proxy;
pub mod model;
pub mod pipeline;
pub mod studio;
