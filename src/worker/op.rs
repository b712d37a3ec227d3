//! What the pipeline sends a device worker and what it answers: plain data, no tensors.
use crate::codec::image::Pixels;
use crate::job::ErrorKind;
use crate::model::{Disposition, ModelError};
use std::path::PathBuf;
use tokio::sync::oneshot;


/// Where a model lives and what jobs call it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    pub name: String,
    pub version: String,
    pub path: PathBuf,
}

/// What the pipeline knows about a loaded model: plain data, no tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
    pub image_size: u32,
    pub channels: u8,
    pub levels: usize,
    /// Per level, finest first: (channels, height, width) of one image's latent.
    pub latent_shapes: Vec<[usize; 3]>,
    /// Attribute directions available for edit and augment jobs.
    pub attributes: Vec<String>,
    /// Hex fingerprint of the weights file (the manifest records it).
    pub fingerprint: String,
}

pub use crate::codec::latents::LatentData;

/// Work for the device, in plain data. Attribute names, level counts and temperatures are checked by the pipeline
/// before an op is sent; the worker checks them again and answers [`DeviceError::Input`] if they do not fit.
#[derive(Debug, Clone)]
pub enum DeviceOp {
    /// Latents and bits/dim of one image.
    Encode { image: Pixels },
    /// Encode, add `Σ strength·direction`, decode. `latents`: also return the edited latent.
    Edit { image: Pixels, edits: Vec<(String, f64)>, latents: bool },
    /// One decode per variant: the attribute mix of that variant, then the coarsest `keep_levels` levels kept and
    /// the finer ones redrawn at `temperatures` (one per level, finest first) from `seed`.
    Augment { image: Pixels, variants: Vec<Vec<(String, f64)>>, keep_levels: usize, temperatures: Vec<f64>, seed: u64 },
    /// `frames` decodes of `(1 − t)·z_a + t·z_b`, t from 0 to 1.
    Interpolate { a: Pixels, b: Pixels, frames: usize },
    /// `n` samples at `temperatures` from `seed` (the same as `glowd sample --seed`).
    Sample { n: usize, temperatures: Vec<f64>, seed: u64 },
}

impl DeviceOp {
    /// Images in this op's largest forward pass: what the batch budget counts (a batch of edits runs one encode
    /// and one decode pass of that many images).
    pub fn cost(&self) -> usize {
        match self {
            DeviceOp::Encode { .. } | DeviceOp::Edit { .. } => 1,
            DeviceOp::Augment { variants, .. } => variants.len().max(1),
            DeviceOp::Interpolate { frames, .. } => (*frames).max(2),
            DeviceOp::Sample { n, .. } => (*n).max(1),
        }
    }
}

/// What an op produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceOutput {
    /// Decoded images, in the op's order (edited image, variants, frames, samples).
    pub images: Vec<Pixels>,
    /// Encode: the latent; edit with `latents`: the edited latent.
    pub latents: Option<LatentData>,
    /// Bits/dim of each input image.
    pub bits_per_dim: Vec<f64>,
}

/// Why an op failed. `Clone`, so one failure of a batch answers all its ops.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DeviceError {
    /// The op does not fit the model (a DeadLetter: the same op will fail again).
    #[error("{0}")]
    Input(String),
    /// A torch error while running the batch: perhaps transient (out of memory), retried.
    #[error("device error: {0}")]
    Torch(String),
    #[error("device worker panicked while running a batch: {0}")]
    Panicked(String),
    /// The worker is gone (it failed to start, or the pipeline is shutting down).
    #[error("device worker {0} is not running")]
    Stopped(String),
    #[error("unknown model {0}")]
    UnknownModel(String),
    /// Decoding gave non-finite values (an edit or mix too strong for the model): a DeadLetter, since the same
    /// op gives the same overflow; without this check the image would silently come out black.
    #[error("{0}")]
    NonFinite(String),
    /// Loading a model failed: the daemon must not start.
    #[error("loading model {name} {version} from {path}: {message}")]
    Load { name: String, version: String, path: String, message: String },
}

impl DeviceError {
    pub fn disposition(&self) -> Disposition {
        match self {
            DeviceError::Input(_) | DeviceError::UnknownModel(_) | DeviceError::NonFinite(_) => Disposition::DeadLetter,
            DeviceError::Torch(_) | DeviceError::Panicked(_) => Disposition::Retry,
            DeviceError::Stopped(_) | DeviceError::Load { .. } => Disposition::Fatal,
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            DeviceError::Input(_) => ErrorKind::InvalidForModel,
            DeviceError::Torch(_) => ErrorKind::DeviceError,
            DeviceError::Panicked(_) => ErrorKind::DevicePanic,
            DeviceError::Stopped(_) => ErrorKind::DeviceStopped,
            DeviceError::UnknownModel(_) => ErrorKind::UnknownModel,
            DeviceError::NonFinite(_) => ErrorKind::NonFiniteOutput,
            DeviceError::Load { .. } => ErrorKind::ModelLoad,
        }
    }
}

impl From<ModelError> for DeviceError {
    fn from(e: ModelError) -> Self {
        match e.disposition() {
            Disposition::DeadLetter => DeviceError::Input(e.to_string()),
            _ => DeviceError::Torch(e.to_string()),
        }
    }
}

pub type OpResult = Result<DeviceOutput, DeviceError>;

/// One op and where its answer goes.
pub struct BatchItem {
    pub op: DeviceOp,
    pub reply: oneshot::Sender<OpResult>,
}

/// Ops for one model, run together.
pub struct Batch {
    /// Index into the worker's models (the order of [`DeviceWorker::models`]).
    pub model: usize,
    pub items: Vec<BatchItem>,
}

/// Settings of a device worker.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    pub device: String,
    /// Torch CPU threads (0: torch's default). Process-wide in libtorch.
    pub threads: i32,
    /// Largest number of images in one forward pass; the warm-up runs at this size.
    pub max_batch: usize,
    /// What the coupling networks compute in.
    pub precision: crate::precision::Precision,
    /// The watchdog's bound on one forward pass, in seconds; 0: 20 times the slowest warm-up pass, at least 60.
    pub max_pass_seconds: f64,
}
