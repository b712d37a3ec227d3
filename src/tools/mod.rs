//! The operator tools around a pipeline: `glowd submit` (enqueue one job per image of a prefix), `status` (a run's
//! progress) and `dataset` (a run's latents as Parquet). The pure parts (ids and templates in `submit`, the run
//! tally in `status`, the Parquet in `dataset`) and their S3 and Kafka calls (`ops`) live here; the commands are in
//! `cli::tools`, and the studio calls the same functions.
pub mod dataset;
pub mod ops;
pub mod status;
pub mod submit;
