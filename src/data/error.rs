//! Why a dataset could not be read.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{path}: no usable images{}", report.as_deref().map(|r| format!(" ({r})")).unwrap_or_default())]
    Empty { path: PathBuf, report: Option<String> },
}
