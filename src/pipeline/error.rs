//! The pipeline's one error type: every stage's failure, with the DLQ kind, a readable message, the stage and what
//! to do about it.
use crate::job::{Disposition, JobError, JobFailure, Stage};
use crate::worker::DeviceError;

/// Why a job did not finish at some stage.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{stage:?}: {kind}: {message}")]
pub struct StageError {
    /// Short machine-readable reason (DLQ header `glowd.error.kind`, result `error.kind`).
    pub kind: &'static str,
    pub message: String,
    pub stage: Stage,
    pub disposition: Disposition,
}

impl StageError {
    /// A poison pill: the same job will fail the same way.
    pub fn dead(kind: &'static str, stage: Stage, message: impl Into<String>) -> Self {
        StageError { kind, message: message.into(), stage, disposition: Disposition::DeadLetter }
    }

    /// Transient: retried with backoff within the retry budget.
    pub fn retry(kind: &'static str, stage: Stage, message: impl Into<String>) -> Self {
        StageError { kind, message: message.into(), stage, disposition: Disposition::Retry }
    }

    /// The pipeline cannot go on: it drains and stops; this job is not acknowledged (it will be redelivered).
    pub fn fatal(kind: &'static str, stage: Stage, message: impl Into<String>) -> Self {
        StageError { kind, message: message.into(), stage, disposition: Disposition::Fatal }
    }

    pub fn failure(&self) -> JobFailure {
        JobFailure::new(self.kind, &self.message, self.stage)
    }
}

impl From<&JobError> for StageError {
    fn from(e: &JobError) -> Self {
        StageError::dead(e.kind(), Stage::Parse, e.to_string())
    }
}

impl From<DeviceError> for StageError {
    fn from(e: DeviceError) -> Self {
        StageError { kind: e.kind(), message: e.to_string(), stage: Stage::Device, disposition: e.disposition() }
    }
}

/// Every kind the pipeline itself can give (beyond [`JobError::KINDS`] and the device's), for docs and metrics.
pub const PIPELINE_KINDS: [&str; 14] = [
    "unknown_model",
    "unknown_attribute",
    "invalid_for_model",
    "missing_object",
    "input_too_large",
    "access_denied",
    "empty_input",
    "unsupported_format",
    "corrupt_image",
    "over_pixel_limit",
    "wrong_channels",
    "wrong_size",
    "retries_exhausted",
    "output_exists_differs",
];
