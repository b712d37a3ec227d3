//! What the daemon writes back about a job: the results-topic record (`schemas/result.v1.json`) and the manifest
//! written last beside the outputs (`schemas/manifest.v1.json`).
use super::{ErrorKind, Job, JobError, JobId, JobKind, ModelRef, Stage};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// Longest error message carried in a result (the schema's `maxLength`); longer ones are cut.
pub const MAX_ERROR_MESSAGE_CHARS: usize = 4096;

/// The format version of results and manifests (always 1 here): serialises as `1`, refuses anything else.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct V1;

impl Serialize for V1 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(1)
    }
}

impl<'de> Deserialize<'de> for V1 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match u64::deserialize(d)? {
            1 => Ok(V1),
            v => Err(serde::de::Error::custom(format!("version {v} is not 1"))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Outputs and manifest written.
    Done,
    /// Written to the DLQ; `error` says why.
    DeadLettered,
    /// Deliberately not processed (e.g. the likelihood gate); `skip_reason` says why.
    Skipped,
}


/// Why a job was dead-lettered; the same three fields go into the DLQ record's headers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFailure {
    pub kind: ErrorKind,
    pub message: String,
    pub stage: Stage,
}

impl JobFailure {
    pub fn new(kind: ErrorKind, message: &str, stage: Stage) -> Self {
        let message = if message.chars().count() > MAX_ERROR_MESSAGE_CHARS {
            let mut m: String = message.chars().take(MAX_ERROR_MESSAGE_CHARS - 1).collect();
            m.push('…');
            m
        } else {
            message.to_string()
        };
        JobFailure { kind, message, stage }
    }
}

impl From<&JobError> for JobFailure {
    fn from(e: &JobError) -> Self {
        JobFailure::new(e.kind(), &e.to_string(), Stage::Parse)
    }
}

/// Where a job message was read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourcePosition {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// Seconds per stage; a stage the job did not reach is `None` (absent in JSON).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetch_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encode_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub put_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_seconds: Option<f64>,
}

/// One record on the results topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobResult {
    pub version: V1,
    /// `None` when the message had no readable id (then `source` locates it).
    pub job: Option<JobId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<JobId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<JobKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelRef>,
    pub status: JobStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourcePosition>,
    pub outputs: Vec<String>,
    pub bits_per_dim: Vec<f64>,
    pub timings: Timings,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobFailure>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_reason: Option<String>,
    /// Marks on a finished job: `over_likelihood_gate` when the gate flags rather than skips.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    /// The precision a finished job's outputs were computed at (see `[batching] precision`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<crate::precision::Precision>,
}

impl JobResult {
    /// A finished job.
    pub fn done(job: &Job, outputs: Vec<String>, bits_per_dim: Vec<f64>, timings: Timings) -> Self {
        JobResult {
            version: V1,
            job: Some(job.id.clone()),
            run: job.run.clone(),
            kind: Some(job.kind()),
            model: Some(job.model.clone()),
            status: JobStatus::Done,
            source: None,
            outputs,
            bits_per_dim,
            timings,
            error: None,
            skip_reason: None,
            flags: vec![],
            precision: None,
        }
    }

    /// A job that could not be parsed: only the id (if readable) and the source are known.
    pub fn refused(id: Option<JobId>, error: &JobError, source: Option<SourcePosition>) -> Self {
        JobResult {
            version: V1,
            job: id,
            run: None,
            kind: None,
            model: None,
            status: JobStatus::DeadLettered,
            source,
            outputs: vec![],
            bits_per_dim: vec![],
            timings: Timings::default(),
            error: Some(error.into()),
            skip_reason: None,
            flags: vec![],
            precision: None,
        }
    }
}

/// Media type of a written output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MediaType {
    #[serde(rename = "image/png")]
    Png,
    #[serde(rename = "image/webp")]
    Webp,
    #[serde(rename = "image/gif")]
    Gif,
    /// safetensors latents (no registered media type).
    #[serde(rename = "application/octet-stream")]
    OctetStream,
}

/// One written object: its key, size and SHA-256, so a reader can verify it without trusting the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputEntry {
    pub key: String,
    pub bytes: u64,
    pub sha256: String,
    pub media_type: MediaType,
}

impl OutputEntry {
    pub fn of(key: impl Into<String>, media_type: MediaType, data: &[u8]) -> Self {
        let sha256 = Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect();
        OutputEntry { key: key.into(), bytes: data.len() as u64, sha256, media_type }
    }
}

/// The model that actually produced the outputs (the job names what was asked for).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelProvenance {
    pub name: String,
    pub version: String,
    /// Fingerprint of the weights file (`model::directions::model_fingerprint`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// What the coupling networks computed in (absent in manifests written before precision was recorded: fp32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<crate::precision::Precision>,
}

/// Written last beside a job's outputs: its presence means every listed output is complete. No timestamps or
/// timings, so a redelivered job writes the same bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub version: V1,
    /// The job as understood, defaults and the derived seed filled in.
    pub job: Job,
    pub model: ModelProvenance,
    pub outputs: Vec<OutputEntry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bits_per_dim: Vec<f64>,
    /// The work the outputs are the result of ([`super::work`]); absent in manifests written before it was
    /// recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work: Option<super::Work>,
}

/// The claim (`work.json`): the job as understood, its work, and the outputs this attempt is about to write (key,
/// size, SHA-256): what a later attempt of the same work expects to find there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claim {
    pub version: V1,
    pub job: Job,
    pub work: super::Work,
    pub outputs: Vec<OutputEntry>,
}
