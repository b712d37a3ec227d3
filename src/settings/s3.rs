//! The `[s3]` table: the endpoint, and where job inputs may be read from.
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowedInput {
    pub bucket: String,
    #[serde(default)]
    pub prefix: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    /// `http(s)://host:port`; absent: AWS's regional endpoint.
    pub endpoint: Option<String>,
    pub region: String,
    /// Path-style URLs (`endpoint/bucket/key`): MinIO and most S3-compatible servers need it.
    #[serde(default = "yes")]
    pub force_path_style: bool,
    /// Where job inputs may be read from; any other key is dead-lettered (`forbidden_key`).
    pub allowed_inputs: Vec<AllowedInput>,
    /// Per-request timeout in seconds.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: f64,
}

fn yes() -> bool {
    true
}
fn default_timeout() -> f64 {
    30.0
}
