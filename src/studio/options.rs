//! What a studio runs with (`glowd studio`'s flags and the pipeline file, resolved).
use crate::settings::{GateSettings, ImageSettings, PipelineFile};
use crate::worker::ModelSpec;
use std::path::PathBuf;

/// Everything a studio runs with.
#[derive(Debug, Clone)]
pub struct Options {
    pub models: Vec<ModelSpec>,
    /// `cpu`, `cuda`, `cuda:N`, `auto`.
    pub device: String,
    /// fp32, or bf16 coupling networks (`--precision`, as every model command takes it).
    pub precision: crate::precision::Precision,
    /// Torch CPU threads (0: torch's default).
    pub threads: i32,
    /// `127.0.0.1:8787`; port 0 picks a free one.
    pub listen: String,
    /// Bearer token every API call must carry; required for a non-loopback `listen`.
    pub token: Option<String>,
    /// How uploads are bounded, decoded and fitted to the model (the pipeline's `[images]` table).
    pub images: ImageSettings,
    /// Slider range: ± this (the pipeline's `jobs.max_strength`).
    pub max_strength: f64,
    /// The likelihood gate shown beside a face's bits/dim.
    pub gate: GateSettings,
    /// Folders the page may list and open images from.
    pub roots: Vec<PathBuf>,
    /// The pipeline file (path, loaded), for the S3 listing, Export, Submit and the Runs tab.
    pub pipeline: Option<(PathBuf, PipelineFile)>,
    /// Show the "Submit run" button (needs a pipeline with `[submit]`, `[kafka]` and `[s3]`).
    pub allow_submit: bool,
}
