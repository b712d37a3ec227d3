//! Settings in one place: the pipeline file (`pipelines/*.toml`) and its tables, read by the daemon, the embedded
//! mode (`glowd run`) and the tools alike. Plain serde data: no tch, tokio, Kafka or S3 type.
pub mod file;
pub mod http;
pub mod kafka;
pub mod pipeline;
pub mod s3;

pub use file::*;
pub use http::*;
pub use kafka::*;
pub use pipeline::*;
pub use s3::*;
