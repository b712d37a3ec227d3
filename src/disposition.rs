//! What a caller does with a job after an error: the one policy shared by the model, the job contract and the
//! pipeline (and so by the dead-letter topic). It names no tch, tokio, Kafka or S3 type.

/// What a caller (CLI, daemon) should do after an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Transient: try the same work again later (bounded, with backoff).
    Retry,
    /// The input is bad and will stay bad: report it and move on.
    DeadLetter,
    /// The process cannot continue meaningfully (broken model files, device lost).
    Fatal,
}
