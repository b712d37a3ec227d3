//! The pipeline's one error type: every stage's failure, with the DLQ kind, a readable message, the stage and what
//! to do about it.
use crate::job::{Disposition, ErrorKind, JobError, JobFailure, Stage};
use crate::worker::DeviceError;
use super::store_health::StoreScope;

/// Why a job did not finish at some stage.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{stage}: {kind}: {message}")]
pub struct StageError {
    /// Short machine-readable reason (DLQ header `glowd.error.kind`, result `error.kind`).
    pub kind: ErrorKind,
    pub message: String,
    pub stage: Stage,
    pub disposition: Disposition,
    /// The job is being abandoned at shutdown: it is neither reported nor acknowledged (it will be redelivered).
    pub abandoned: bool,
    /// For a store's denial (401/403): which of the daemon's accesses was denied. Retried like an outage.
    pub denied: Option<StoreScope>,
}

impl StageError {
    /// A poison pill: the same job will fail the same way.
    pub fn dead(kind: ErrorKind, stage: Stage, message: impl Into<String>) -> Self {
        StageError { kind, message: message.into(), stage, disposition: Disposition::DeadLetter, abandoned: false, denied: None }
    }

    /// Transient: retried with backoff within the retry budget.
    pub fn retry(kind: ErrorKind, stage: Stage, message: impl Into<String>) -> Self {
        StageError { kind, message: message.into(), stage, disposition: Disposition::Retry, abandoned: false, denied: None }
    }

    /// The pipeline cannot go on: it drains and stops; this job is not acknowledged (it will be redelivered).
    pub fn fatal(kind: ErrorKind, stage: Stage, message: impl Into<String>) -> Self {
        StageError { kind, message: message.into(), stage, disposition: Disposition::Fatal, abandoned: false, denied: None }
    }

    /// The store denied the daemon's request (401/403): retried like an outage of `scope`, never the job's fault
    /// while nothing in `scope` is served (`access_denied` once the scope is served and this still is not).
    pub fn denied(stage: Stage, scope: StoreScope, message: impl Into<String>) -> Self {
        StageError {
            kind: ErrorKind::AccessDenied,
            message: message.into(),
            stage,
            disposition: Disposition::Retry,
            abandoned: false,
            denied: Some(scope),
        }
    }

    /// The stage gave up because the job is being abandoned (shutdown past the drain timeout).
    pub fn abandoned(stage: Stage) -> Self {
        StageError {
            kind: ErrorKind::Internal,
            message: "shutdown".into(),
            stage,
            disposition: Disposition::Retry,
            abandoned: true,
            denied: None,
        }
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
        StageError { kind: e.kind(), message: e.to_string(), stage: Stage::Device, disposition: e.disposition(), abandoned: false, denied: None }
    }
}
