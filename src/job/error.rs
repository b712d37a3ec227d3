//! Why a job message was refused, and how caller text is quoted in that reason.
use super::*;

/// Why a job message was refused. Every variant is a poison pill: retrying the same bytes cannot succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JobError {
    #[error("job message is {size} bytes, over the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("job message is not JSON: {0}")]
    NotJson(String),
    #[error("job version {found} is not supported (this daemon reads version {JOB_VERSION})")]
    UnknownVersion { found: String },
    #[error("unknown job kind {found} (expected one of edit, encode, augment, interpolate, sample)")]
    UnknownKind { found: String },
    #[error("job does not match schema job.v1: {0}")]
    Schema(String),
    #[error("invalid job: {0}")]
    Invalid(String),
    #[error("{what} is {value}, over this pipeline's limit of {limit}")]
    OverLimit { what: &'static str, value: String, limit: String },
    #[error("input {uri}: {source}")]
    ForbiddenKey { uri: String, source: KeyError },
}

impl JobError {
    pub fn disposition(&self) -> Disposition {
        Disposition::DeadLetter
    }

    /// Short machine-readable reason, for the DLQ `error kind` header, the result record and metric labels.
    pub fn kind(&self) -> ErrorKind {
        match self {
            JobError::TooLarge { .. } => ErrorKind::TooLarge,
            JobError::NotJson(_) => ErrorKind::NotJson,
            JobError::UnknownVersion { .. } => ErrorKind::UnknownVersion,
            JobError::UnknownKind { .. } => ErrorKind::UnknownKind,
            JobError::Schema(_) => ErrorKind::Schema,
            JobError::Invalid(_) => ErrorKind::Invalid,
            JobError::OverLimit { .. } => ErrorKind::OverLimit,
            JobError::ForbiddenKey { .. } => ErrorKind::ForbiddenKey,
        }
    }

    /// Every kind [`JobError::kind`] can return (for metric label pre-registration and docs).
    pub const KINDS: [ErrorKind; 8] = [
        ErrorKind::TooLarge,
        ErrorKind::NotJson,
        ErrorKind::UnknownVersion,
        ErrorKind::UnknownKind,
        ErrorKind::Schema,
        ErrorKind::Invalid,
        ErrorKind::OverLimit,
        ErrorKind::ForbiddenKey,
    ];
}

/// Caller text quoted in an error: escaped (no control characters reach a header or a log line) and cut short.
pub(crate) fn quote(s: &str) -> String {
    let mut out: String = s.chars().take(MAX_QUOTED_CHARS).flat_map(char::escape_debug).collect();
    if s.chars().count() > MAX_QUOTED_CHARS {
        out.push('…');
    }
    format!("\"{out}\"")
}
