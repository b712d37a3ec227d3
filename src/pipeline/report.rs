//! Where results and dead letters go: the [`Reporter`] trait, with JSON-lines files for the embedded mode. The
//! Kafka implementation (results topic, DLQ topic with headers) is [`crate::kafka::KafkaReporter`].
use super::store::BoxFuture;
use crate::job::{JobFailure, JobId, JobResult, SourcePosition};
use serde::Serialize;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

/// A job that could not be done, with everything needed to look at it again: the original payload, why, where.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub payload: Vec<u8>,
    pub job: Option<JobId>,
    pub error: JobFailure,
    pub source: Option<SourcePosition>,
    /// Attempts made at the failing stage (1 unless it was retried).
    pub attempts: u32,
    /// The job message's W3C trace context, passed on so a trace continues into the DLQ.
    pub traceparent: Option<String>,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ReportError(pub String);

pub trait Reporter: Send + Sync + 'static {
    /// Publishes a result record; done when it is durable (acknowledged by the broker, flushed to the file).
    fn result<'a>(&'a self, result: &'a JobResult) -> BoxFuture<'a, Result<(), ReportError>>;
    /// Publishes a dead letter; done when it is durable. The job is acknowledged only after this.
    fn dead_letter<'a>(&'a self, letter: &'a DeadLetter) -> BoxFuture<'a, Result<(), ReportError>>;
}

/// One JSON object per line, appended and flushed per record.
pub struct JsonlReporter {
    results: Mutex<std::fs::File>,
    dead: Mutex<std::fs::File>,
}

#[derive(Serialize)]
struct DeadLine<'a> {
    job: Option<&'a JobId>,
    error: &'a JobFailure,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'a SourcePosition>,
    attempts: u32,
    /// The original message, as text (invalid UTF-8 replaced, then `payload_lossy` is true).
    payload: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    payload_lossy: bool,
}

impl JsonlReporter {
    /// Creates (truncates) both files: they report this run.
    pub fn create(results: &Path, dead_letters: &Path) -> std::io::Result<Self> {
        let open = |p: &Path| {
            if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::File::create(p)
        };
        Ok(JsonlReporter { results: Mutex::new(open(results)?), dead: Mutex::new(open(dead_letters)?) })
    }

    fn write_line(file: &Mutex<std::fs::File>, value: &impl Serialize) -> Result<(), ReportError> {
        let mut line = serde_json::to_vec(value).map_err(|e| ReportError(e.to_string()))?;
        line.push(b'\n');
        let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
        f.write_all(&line).and_then(|_| f.flush()).map_err(|e| ReportError(e.to_string()))
    }
}

impl Reporter for JsonlReporter {
    fn result<'a>(&'a self, result: &'a JobResult) -> BoxFuture<'a, Result<(), ReportError>> {
        Box::pin(async move { Self::write_line(&self.results, result) })
    }

    fn dead_letter<'a>(&'a self, l: &'a DeadLetter) -> BoxFuture<'a, Result<(), ReportError>> {
        Box::pin(async move {
            let (payload, lossy) = match std::str::from_utf8(&l.payload) {
                Ok(s) => (s.to_string(), false),
                Err(_) => (String::from_utf8_lossy(&l.payload).into_owned(), true),
            };
            let line = DeadLine {
                job: l.job.as_ref(),
                error: &l.error,
                source: l.source.as_ref(),
                attempts: l.attempts,
                payload,
                payload_lossy: lossy,
            };
            Self::write_line(&self.dead, &line)
        })
    }
}
