//! The operator tools around a pipeline: `glowd submit` (enqueue one job per image of a prefix), `status` (a run's
//! progress) and `dataset` (a run's latents as Parquet). Pure parts live here; the commands are in `cli::tools`.
pub mod dataset;
pub mod submit;
