//! Errors of the model boundary. Every variant says what the caller should do with the job that hit it.
use crate::disposition::Disposition;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("invalid model config: {0}")]
    Config(String),
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch { path: PathBuf, name: String, expected: Vec<i64>, found: Vec<i64> },
    #[error("{path}: tensor `{name}` has dtype {found}, expected {expected}")]
    DtypeMismatch { path: PathBuf, name: String, expected: String, found: String },
    #[error("{path}: weights do not match the config: missing [{}], unexpected [{}]", missing.join(", "), unexpected.join(", "))]
    MissingOrUnexpected { path: PathBuf, missing: Vec<String>, unexpected: Vec<String> },
    #[error("input: {0}")]
    Input(String),
    /// A foreign checkpoint that cannot be mapped onto a glowd model (names the tensors).
    #[error("import: {0}")]
    Import(String),
    #[error("unknown device `{0}` (expected cpu, cuda, cuda:N or auto)")]
    Device(String),
    #[error("device not available on this machine: {0}")]
    DeviceUnavailable(String),
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
}

impl ModelError {
    pub fn disposition(&self) -> Disposition {
        match self {
            ModelError::Input(_) => Disposition::DeadLetter,
            ModelError::Torch(_) => Disposition::Retry,
            _ => Disposition::Fatal,
        }
    }

    pub(crate) fn file(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        ModelError::File { path: path.into(), message: message.to_string() }
    }
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
