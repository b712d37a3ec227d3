//! Why `glowd serve` or `glowd run` could not start, or had to stop: one variant per cause, each a line an
//! operator can act on. All are fatal to the process (exit status 2).
use crate::s3::SelfTestError;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    PipelineFile(#[from] crate::settings::ConfigError),
    #[error("the pipeline file has no [{0}] table: `glowd serve` needs one")]
    MissingTable(&'static str),
    #[error("the pipeline file names no models ([[models]] or models_dir)")]
    NoModels,
    #[error("output.bucket: the daemon needs an output bucket")]
    NoOutputBucket,
    #[error("invalid settings: {0}")]
    Settings(String),
    #[error("metrics recorder: {0}")]
    Metrics(String),
    #[error("tokio runtime: {0}")]
    Runtime(#[from] std::io::Error),
    #[error("http: {0}")]
    Http(String),
    #[error("kafka: {0}")]
    Kafka(String),
    #[error("{0}")]
    Models(String),
    #[error("{0}")]
    SelfTest(#[from] SelfTestError),
    #[error("a start-up task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("the pipeline stopped: {0}")]
    Pipeline(String),
    #[error("input: {0}")]
    Input(String),
}
