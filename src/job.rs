//! The job contract: what a message on the jobs topic may say, and what the daemon writes back.
//!
//! A job is a small versioned JSON document (a claim check: S3 URIs and a few numbers, never image bytes). It is
//! checked in this order, each step with its own [`JobError::kind`] so the DLQ header says which gate refused it:
//! size (`too_large`) → JSON (`not_json`) → version (`unknown_version`) → kind (`unknown_kind`) → the embedded
//! JSON Schema `schemas/job.v1.json` (`schema`) → the Rust types (`deny_unknown_fields`; `schema`) → rules a schema
//! cannot state (`invalid`: duplicate attributes, min > max) → this pipeline's configured limits (`over_limit`) →
//! input object keys (`forbidden_key`). Every failure is a poison pill: [`Disposition::DeadLetter`].
//!
//! The schema is the published contract and holds the hard ceilings (max edits, variants, frames, samples);
//! [`JobLimits`] lets a pipeline lower them, never raise them, so a job valid for one daemon is never silently
//! accepted beyond what the schema promises.
//!
//! Callers never choose output keys: [`output_prefix`] derives them from the job id, so a redelivered job
//! rewrites the same keys (with create-only writes, a second write is a no-op).
//!
//! Submodules: [`key`] (S3 URIs and key confinement) and [`report`] (result records and manifests).
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::fmt;
use std::sync::OnceLock;

pub use crate::model::Disposition;

pub mod key;
pub mod report;

pub use key::{check_key, check_key_allowed, parse_s3_uri, AllowedPrefix, KeyError, S3Uri, MAX_KEY_BYTES};
pub use report::{JobFailure, JobResult, JobStatus, Manifest, MediaType, ModelProvenance, OutputEntry, SourcePosition, Stage, Timings};

/// The job message schema, embedded so the daemon validates against exactly the file in the repository.
pub const JOB_SCHEMA: &str = include_str!("../schemas/job.v1.json");
/// The results-topic record schema.
pub const RESULT_SCHEMA: &str = include_str!("../schemas/result.v1.json");
/// The per-job manifest schema.
pub const MANIFEST_SCHEMA: &str = include_str!("../schemas/manifest.v1.json");
/// `$id` of the job schema: the result and manifest schemas `$ref` it.
pub const JOB_SCHEMA_ID: &str = "urn:glowd:schema:job.v1";

/// The only job format version this daemon reads.
pub const JOB_VERSION: u64 = 1;
/// The job kinds of version 1, in schema order.
pub const JOB_KINDS: [&str; 5] = ["edit", "encode", "augment", "interpolate", "sample"];

/// Default for [`JobLimits::max_payload_bytes`]: jobs are claim checks of a few hundred bytes; 64 KiB leaves room
/// for long key lists without letting a message carry image data (RELIABILITY.md decision 7).
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// Schema ceiling: `{attribute, strength}` pairs per edit job (`$defs/edit/properties/edits/maxItems`).
pub const SCHEMA_MAX_EDITS: usize = 32;
/// Schema ceiling: attribute ranges per augment job.
pub const SCHEMA_MAX_ATTRIBUTES: usize = 32;
/// Schema ceiling: variants per augment job.
pub const SCHEMA_MAX_VARIANTS: u32 = 64;
/// Schema ceiling: frames per interpolate job (both end points included).
pub const SCHEMA_MAX_FRAMES: u32 = 128;
/// Schema ceiling: images per sample job.
pub const SCHEMA_MAX_SAMPLES: u32 = 256;
/// Schema ceiling on |strength| (edits and augment ranges).
pub const SCHEMA_MAX_STRENGTH: f64 = 10.0;
/// Default |strength| bound, the same as `glowd edit --max-strength`: beyond it edits leave the data manifold.
pub const DEFAULT_MAX_STRENGTH: f64 = 4.0;
/// Temperature used when a job gives none (the Glow paper's and `glowd sample`'s default).
pub const DEFAULT_TEMPERATURE: f64 = 0.7;
/// Name of the manifest written last beside each job's outputs.
pub const MANIFEST_NAME: &str = "manifest.json";
/// Largest seed a job may carry or derive: 2^53 − 1, so every JSON reader (JavaScript, jq) keeps it exact.
pub const MAX_SEED: u64 = (1 << 53) - 1;
/// Longest excerpt of caller text quoted in an error message (DLQ headers should stay short and printable).
const MAX_QUOTED_CHARS: usize = 64;
/// Schema violations listed in one error message; the rest are counted.
const MAX_SCHEMA_ERRORS_LISTED: usize = 4;

// ---------------------------------------------------------------------------------------------------------------
// Types

/// A job id: 1..=128 characters of `[A-Za-z0-9._-]`, not `.` or `..`. It becomes a key segment, so the check lives
/// in the type: no `JobId` can name a path outside its prefix.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JobId(String);

/// Longest job id (and run id).
pub const MAX_ID_CHARS: usize = 128;

impl JobId {
    pub fn new(id: impl Into<String>) -> Result<Self, String> {
        let id = id.into();
        if id.is_empty() || id.len() > MAX_ID_CHARS {
            return Err(format!("id must be 1..={MAX_ID_CHARS} characters, got {}", id.chars().count()));
        }
        if let Some(c) = id.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
            return Err(format!("id may only hold [A-Za-z0-9._-], found {c:?}"));
        }
        if id == "." || id == ".." {
            return Err(format!("id may not be `{id}`"));
        }
        Ok(JobId(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for JobId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        JobId::new(s)
    }
}

impl From<JobId> for String {
    fn from(id: JobId) -> String {
        id.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which model (and which trained version of it) a job must run on. An unknown one is refused later, where the
/// loaded models are known.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRef {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Edit,
    Encode,
    Augment,
    Interpolate,
    Sample,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Edit => "edit",
            JobKind::Encode => "encode",
            JobKind::Augment => "augment",
            JobKind::Interpolate => "interpolate",
            JobKind::Sample => "sample",
        }
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Image output format. WebP is written lossless (the `image` crate's encoder), so both round-trip exactly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    #[default]
    Png,
    Webp,
}

impl ImageFormat {
    pub fn extension(self) -> &'static str {
        match self {
            ImageFormat::Png => "png",
            ImageFormat::Webp => "webp",
        }
    }

    pub fn media_type(self) -> MediaType {
        match self {
            ImageFormat::Png => MediaType::Png,
            ImageFormat::Webp => MediaType::Webp,
        }
    }
}

/// Prior temperature: one for every level, or one per level (finest first). Whether a per-level list matches the
/// model's level count is checked where the model is known ([`Temperature::per_level`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Temperature {
    Uniform(f64),
    PerLevel(Vec<f64>),
}

impl Default for Temperature {
    fn default() -> Self {
        Temperature::Uniform(DEFAULT_TEMPERATURE)
    }
}

impl Temperature {
    /// One temperature per level, or an error naming the mismatch (a DeadLetter: the job asks for another model).
    pub fn per_level(&self, levels: usize) -> Result<Vec<f64>, String> {
        match self {
            Temperature::Uniform(t) => Ok(vec![*t; levels]),
            Temperature::PerLevel(ts) if ts.len() == levels => Ok(ts.clone()),
            Temperature::PerLevel(ts) => {
                Err(format!("{} temperatures given, the model has {levels} levels: give one, or one per level", ts.len()))
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Edit {
    pub attribute: String,
    pub strength: f64,
}

/// Edit one image: add `strength` × the attribute direction for each edit, decode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EditJob {
    pub input: S3Uri,
    pub edits: Vec<Edit>,
    /// Also write the edited latent (safetensors) beside the image.
    #[serde(default)]
    pub write_latents: bool,
    #[serde(default)]
    pub format: ImageFormat,
}

/// Encode one image: its latent (every level) and bits/dim, for latent datasets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncodeJob {
    pub input: S3Uri,
}

/// The range one attribute's strength is drawn from (uniformly, seeded) for each augment variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StrengthRange {
    pub attribute: String,
    pub min: f64,
    pub max: f64,
}

/// N variants of one image: random attribute mixes plus the finer levels redrawn at a temperature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AugmentJob {
    pub input: S3Uri,
    #[serde(deserialize_with = "integral")]
    pub variants: u32,
    /// Omitted in the message means derived from the job id ([`derived_seed`]); [`parse_job`] fills it in, so the
    /// manifest records the seed that was used.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "integral_opt")]
    pub seed: Option<u64>,
    pub attributes: Vec<StrengthRange>,
    /// Temperature of the redrawn (finer) levels.
    #[serde(default)]
    pub temperature: Temperature,
    /// Coarsest levels kept from the input.
    #[serde(default = "default_keep_levels", deserialize_with = "integral")]
    pub keep_levels: u32,
    #[serde(default)]
    pub format: ImageFormat,
}

/// `frames` images from one input to the other (both included), optionally an animated GIF.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterpolateJob {
    pub inputs: [S3Uri; 2],
    #[serde(deserialize_with = "integral")]
    pub frames: u32,
    #[serde(default)]
    pub animation: bool,
    #[serde(default)]
    pub format: ImageFormat,
}

/// `n` images drawn from the prior at a temperature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleJob {
    #[serde(deserialize_with = "integral")]
    pub n: u32,
    #[serde(default)]
    pub temperature: Temperature,
    /// As [`AugmentJob::seed`].
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "integral_opt")]
    pub seed: Option<u64>,
    #[serde(default)]
    pub format: ImageFormat,
}

/// What a job asks for, by kind (the `kind` field of the message).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobSpec {
    Edit(EditJob),
    Encode(EncodeJob),
    Augment(AugmentJob),
    Interpolate(InterpolateJob),
    Sample(SampleJob),
}

/// A parsed, validated job. The message's `version` is implied (always [`JOB_VERSION`]) and written back on
/// serialisation; the common fields and the kind's fields share one flat JSON object.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: JobId,
    /// The submit run this job belongs to, if any.
    pub run: Option<JobId>,
    pub model: ModelRef,
    pub spec: JobSpec,
}

fn default_keep_levels() -> u32 {
    1
}

/// JSON Schema's `integer` accepts `3.0`; serde's `u32` does not. Accept integral floats so the types agree with
/// the schema rather than refusing what the contract allows.
fn integral<'de, D: Deserializer<'de>, T: TryFrom<u64>>(d: D) -> Result<T, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Num {
        Int(u64),
        Float(f64),
    }
    let n = match Num::deserialize(d)? {
        Num::Int(n) => n,
        Num::Float(f) if f >= 0.0 && f.fract() == 0.0 && f <= MAX_SEED as f64 => f as u64,
        Num::Float(f) => return Err(D::Error::custom(format!("{f} is not a non-negative integer"))),
    };
    T::try_from(n).map_err(|_| D::Error::custom(format!("{n} is out of range")))
}

fn integral_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    integral(d).map(Some)
}

impl Job {
    pub fn kind(&self) -> JobKind {
        match &self.spec {
            JobSpec::Edit(_) => JobKind::Edit,
            JobSpec::Encode(_) => JobKind::Encode,
            JobSpec::Augment(_) => JobKind::Augment,
            JobSpec::Interpolate(_) => JobKind::Interpolate,
            JobSpec::Sample(_) => JobKind::Sample,
        }
    }

    /// The input objects the job reads, in order.
    pub fn inputs(&self) -> Vec<&S3Uri> {
        match &self.spec {
            JobSpec::Edit(j) => vec![&j.input],
            JobSpec::Encode(j) => vec![&j.input],
            JobSpec::Augment(j) => vec![&j.input],
            JobSpec::Interpolate(j) => j.inputs.iter().collect(),
            JobSpec::Sample(_) => vec![],
        }
    }

    /// The seed of a seeded job (augment, sample): the message's, or the one derived from the id.
    pub fn seed(&self) -> Option<u64> {
        match &self.spec {
            JobSpec::Augment(j) => Some(j.seed.unwrap_or_else(|| derived_seed(&self.id))),
            JobSpec::Sample(j) => Some(j.seed.unwrap_or_else(|| derived_seed(&self.id))),
            _ => None,
        }
    }

    /// The file names this job writes under its [`output_prefix`], in a fixed order, the manifest excluded (it
    /// is written last). Zero-padded to three digits: every count the schema allows fits.
    pub fn output_names(&self) -> Vec<String> {
        const LATENTS: &str = "latents.safetensors";
        match &self.spec {
            JobSpec::Edit(j) => {
                let mut names = vec![format!("edited.{}", j.format.extension())];
                if j.write_latents {
                    names.push(LATENTS.to_string());
                }
                names
            }
            JobSpec::Encode(_) => vec![LATENTS.to_string()],
            JobSpec::Augment(j) => {
                (0..j.variants).map(|i| format!("variant-{i:03}.{}", j.format.extension())).collect()
            }
            JobSpec::Interpolate(j) => {
                let mut names: Vec<String> =
                    (0..j.frames).map(|i| format!("frame-{i:03}.{}", j.format.extension())).collect();
                if j.animation {
                    names.push("animation.gif".to_string());
                }
                names
            }
            JobSpec::Sample(j) => (0..j.n).map(|i| format!("sample-{i:03}.{}", j.format.extension())).collect(),
        }
    }

    /// Fills in what the message may omit but the outputs depend on (today: the seed), so that serialising the
    /// job (into the manifest) records everything needed to reproduce the outputs.
    fn fill_derived(&mut self) {
        let seed = derived_seed(&self.id);
        match &mut self.spec {
            JobSpec::Augment(j) => {
                j.seed.get_or_insert(seed);
            }
            JobSpec::Sample(j) => {
                j.seed.get_or_insert(seed);
            }
            _ => {}
        }
    }
}

/// The seed of a seeded job that names none: FNV-1a (64-bit) of `glowd.seed.v1:<id>`, cut to 53 bits. Part of the
/// contract: changing it changes the outputs of every such job, so a new scheme needs a new tag.
pub fn derived_seed(id: &JobId) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in b"glowd.seed.v1:".iter().chain(id.as_str().as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h & MAX_SEED
}

impl Serialize for Job {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        // The kind's fields come from the tagged enum; the common ones go first so the JSON reads naturally.
        let spec = match serde_json::to_value(&self.spec).map_err(serde::ser::Error::custom)? {
            Value::Object(m) => m,
            _ => return Err(serde::ser::Error::custom("job spec did not serialise to an object")),
        };
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("version", &JOB_VERSION)?;
        map.serialize_entry("id", &self.id)?;
        if let Some(run) = &self.run {
            map.serialize_entry("run", run)?;
        }
        map.serialize_entry("kind", &self.kind())?;
        map.serialize_entry("model", &self.model)?;
        for (k, v) in spec.iter().filter(|(k, _)| k.as_str() != "kind") {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Job {
    /// serde cannot combine `flatten` with `deny_unknown_fields`, so the object is split by hand: the common fields
    /// into a strict header, everything else (with `kind`) into the strict tagged spec.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Header {
            #[serde(deserialize_with = "integral")]
            version: u64,
            id: JobId,
            #[serde(default)]
            run: Option<JobId>,
            model: ModelRef,
        }
        let mut rest = Map::<String, Value>::deserialize(d)?;
        let mut header = Map::new();
        for field in ["version", "id", "run", "model"] {
            if let Some(v) = rest.remove(field) {
                header.insert(field.to_string(), v);
            }
        }
        let header: Header = serde_json::from_value(Value::Object(header)).map_err(D::Error::custom)?;
        if header.version != JOB_VERSION {
            return Err(D::Error::custom(format!("job version {} is not {JOB_VERSION}", header.version)));
        }
        let spec: JobSpec = serde_json::from_value(Value::Object(rest)).map_err(D::Error::custom)?;
        Ok(Job { id: header.id, run: header.run, model: header.model, spec })
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Errors

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
    pub fn kind(&self) -> &'static str {
        match self {
            JobError::TooLarge { .. } => "too_large",
            JobError::NotJson(_) => "not_json",
            JobError::UnknownVersion { .. } => "unknown_version",
            JobError::UnknownKind { .. } => "unknown_kind",
            JobError::Schema(_) => "schema",
            JobError::Invalid(_) => "invalid",
            JobError::OverLimit { .. } => "over_limit",
            JobError::ForbiddenKey { .. } => "forbidden_key",
        }
    }

    /// Every kind [`JobError::kind`] can return (for metric label pre-registration and docs).
    pub const KINDS: [&'static str; 8] =
        ["too_large", "not_json", "unknown_version", "unknown_kind", "schema", "invalid", "over_limit", "forbidden_key"];
}

/// Caller text quoted in an error: escaped (no control characters reach a header or a log line) and cut short.
pub(crate) fn quote(s: &str) -> String {
    let mut out: String = s.chars().take(MAX_QUOTED_CHARS).flat_map(char::escape_debug).collect();
    if s.chars().count() > MAX_QUOTED_CHARS {
        out.push('…');
    }
    format!("\"{out}\"")
}

// ---------------------------------------------------------------------------------------------------------------
// Limits and the parser

/// Per-pipeline limits on a job. Defaults equal the schema's ceilings except `max_strength` (±4, as the CLI);
/// a pipeline may lower any of them, never raise one above the schema ([`JobLimits::check`]). A job over a limit
/// is dead-lettered with kind `over_limit`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobLimits {
    /// Largest job message in bytes; checked before parsing, so a huge message costs no JSON work.
    pub max_payload_bytes: usize,
    /// Most `{attribute, strength}` pairs in one edit job.
    pub max_edits: usize,
    /// Most attribute ranges in one augment job.
    pub max_attributes: usize,
    /// Most variants per augment job (each is one decode on the device).
    pub max_variants: u32,
    /// Most frames per interpolate job.
    pub max_frames: u32,
    /// Most images per sample job.
    pub max_samples: u32,
    /// Largest |strength| in edits and augment ranges.
    pub max_strength: f64,
}

impl Default for JobLimits {
    fn default() -> Self {
        JobLimits {
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            max_edits: SCHEMA_MAX_EDITS,
            max_attributes: SCHEMA_MAX_ATTRIBUTES,
            max_variants: SCHEMA_MAX_VARIANTS,
            max_frames: SCHEMA_MAX_FRAMES,
            max_samples: SCHEMA_MAX_SAMPLES,
            max_strength: DEFAULT_MAX_STRENGTH,
        }
    }
}

/// A pipeline's job settings that cannot work (a limit above the schema's ceiling, a malformed allowed prefix).
#[derive(Debug, Clone, thiserror::Error)]
pub enum JobConfigError {
    #[error("{name} = {value} is above the job schema's ceiling of {ceiling}")]
    AboveCeiling { name: &'static str, value: String, ceiling: String },
    #[error("{name} must be at least {min}")]
    BelowMinimum { name: &'static str, min: String },
    #[error("allowed input s3://{bucket}/{prefix}: {source}")]
    AllowedPrefix { bucket: String, prefix: String, source: KeyError },
    #[error("embedded schema {name} does not compile: {message}")]
    Schema { name: &'static str, message: String },
}

impl JobLimits {
    /// Refuses limits the schema would contradict (above a ceiling) or that refuse every job (zero).
    pub fn check(&self) -> Result<(), JobConfigError> {
        fn ceiling<T: PartialOrd + fmt::Display>(name: &'static str, v: T, c: T) -> Result<(), JobConfigError> {
            if v > c {
                return Err(JobConfigError::AboveCeiling { name, value: v.to_string(), ceiling: c.to_string() });
            }
            Ok(())
        }
        ceiling("max_edits", self.max_edits, SCHEMA_MAX_EDITS)?;
        ceiling("max_attributes", self.max_attributes, SCHEMA_MAX_ATTRIBUTES)?;
        ceiling("max_variants", self.max_variants, SCHEMA_MAX_VARIANTS)?;
        ceiling("max_frames", self.max_frames, SCHEMA_MAX_FRAMES)?;
        ceiling("max_samples", self.max_samples, SCHEMA_MAX_SAMPLES)?;
        ceiling("max_strength", self.max_strength, SCHEMA_MAX_STRENGTH)?;
        let min = |name: &'static str, ok: bool, min: &str| {
            if ok {
                Ok(())
            } else {
                Err(JobConfigError::BelowMinimum { name, min: min.to_string() })
            }
        };
        // 256 bytes is already too small for a real job; below it the setting is surely a unit mistake.
        min("max_payload_bytes", self.max_payload_bytes >= 256, "256")?;
        min("max_edits", self.max_edits >= 1, "1")?;
        min("max_attributes", self.max_attributes >= 1, "1")?;
        min("max_variants", self.max_variants >= 1, "1")?;
        min("max_frames", self.max_frames >= 2, "2")?;
        min("max_samples", self.max_samples >= 1, "1")?;
        min("max_strength", self.max_strength.is_finite() && self.max_strength >= 0.0, "0")?;
        Ok(())
    }
}

/// Validates job messages: the compiled schema, this pipeline's limits, and where inputs may be read from.
/// Build one at start-up (schema compilation is the expensive part) and share it; it is `Send + Sync`.
pub struct JobParser {
    validator: jsonschema::Validator,
    limits: JobLimits,
    /// `None`: any well-formed key in any bucket (the hygiene checks still apply). The daemon always confines.
    allowed_inputs: Option<Vec<AllowedPrefix>>,
}

impl fmt::Debug for JobParser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobParser").field("limits", &self.limits).field("allowed_inputs", &self.allowed_inputs).finish()
    }
}

impl JobParser {
    /// A parser with these limits that accepts any well-formed input key. See [`JobParser::confine_inputs`].
    pub fn new(limits: JobLimits) -> Result<Self, JobConfigError> {
        limits.check()?;
        Ok(JobParser { validator: compile(SchemaName::Job)?, limits, allowed_inputs: None })
    }

    /// Only input objects under one of these bucket/prefix pairs may be read; any other is `forbidden_key`. An
    /// empty list refuses every job that has an input (sample jobs still run).
    pub fn confine_inputs(mut self, allowed: Vec<AllowedPrefix>) -> Self {
        self.allowed_inputs = Some(allowed);
        self
    }

    pub fn limits(&self) -> &JobLimits {
        &self.limits
    }

    /// Checks a message through every gate (see the module docs) and returns the job, seed filled in.
    pub fn parse(&self, bytes: &[u8]) -> Result<Job, JobError> {
        if bytes.len() > self.limits.max_payload_bytes {
            return Err(JobError::TooLarge { size: bytes.len(), limit: self.limits.max_payload_bytes });
        }
        let value: Value = serde_json::from_slice(bytes).map_err(|e| JobError::NotJson(e.to_string()))?;
        // Version and kind first: for a message of another version the v1 schema's complaints would be noise.
        let obj = value.as_object().ok_or_else(|| JobError::Schema("a job is a JSON object".into()))?;
        match obj.get("version") {
            None => return Err(JobError::Schema("missing `version`".into())),
            Some(Value::Number(n)) if n.as_u64() == Some(JOB_VERSION) || n.as_f64() == Some(JOB_VERSION as f64) => {}
            Some(Value::Number(n)) => return Err(JobError::UnknownVersion { found: quote(&n.to_string()) }),
            Some(_) => return Err(JobError::Schema("`version` must be an integer".into())),
        }
        match obj.get("kind") {
            None => return Err(JobError::Schema("missing `kind`".into())),
            Some(Value::String(k)) if JOB_KINDS.contains(&k.as_str()) => {}
            Some(Value::String(k)) => return Err(JobError::UnknownKind { found: quote(k) }),
            Some(_) => return Err(JobError::Schema("`kind` must be a string".into())),
        }
        schema_errors(&self.validator, &value).map_err(JobError::Schema)?;
        // Input keys before the types: the schema only checks the URI's shape, and the error should say
        // `forbidden_key`, not a serde message.
        for uri in input_uris(&value) {
            self.check_input(uri)?;
        }
        let mut job: Job = serde_json::from_value(value).map_err(|e| JobError::Schema(e.to_string()))?;
        check_rules(&job)?;
        check_limits(&job, &self.limits)?;
        job.fill_derived();
        Ok(job)
    }

    fn check_input(&self, uri: &str) -> Result<(), JobError> {
        let forbidden = |source| JobError::ForbiddenKey { uri: quote(uri), source };
        let parsed = parse_s3_uri(uri).map_err(forbidden)?;
        if let Some(allowed) = &self.allowed_inputs {
            let pairs: Vec<(&str, &str)> = allowed.iter().map(|a| (a.bucket(), a.prefix())).collect();
            check_key_allowed(&parsed.bucket, &parsed.key, &pairs).map_err(forbidden)?;
        }
        Ok(())
    }
}

/// Parses a job with the default limits, accepting any well-formed input key (no bucket/prefix confinement: the
/// daemon uses a [`JobParser`] with [`JobParser::confine_inputs`]).
pub fn parse_job(bytes: &[u8]) -> Result<Job, JobError> {
    static DEFAULT: OnceLock<JobParser> = OnceLock::new();
    DEFAULT.get_or_init(|| JobParser::new(JobLimits::default()).expect("the embedded job schema compiles")).parse(bytes)
}

/// The job id of a message, if it has a well-formed one, however bad the rest is: lets the result record of a
/// refused job name it. Never fails.
pub fn peek_id(bytes: &[u8], max_payload_bytes: usize) -> Option<JobId> {
    if bytes.len() > max_payload_bytes {
        return None;
    }
    let value: Value = serde_json::from_slice(bytes).ok()?;
    JobId::new(value.get("id")?.as_str()?).ok()
}

fn input_uris(value: &Value) -> Vec<&str> {
    let mut out: Vec<&str> = value.get("input").and_then(Value::as_str).into_iter().collect();
    if let Some(list) = value.get("inputs").and_then(Value::as_array) {
        out.extend(list.iter().filter_map(Value::as_str));
    }
    out
}

/// Rules JSON Schema cannot state.
fn check_rules(job: &Job) -> Result<(), JobError> {
    fn unique<'a>(what: &str, names: impl Iterator<Item = &'a str>) -> Result<(), JobError> {
        let mut seen = BTreeSet::new();
        for n in names {
            if !seen.insert(n) {
                return Err(JobError::Invalid(format!("attribute {} appears twice in {what}", quote(n))));
            }
        }
        Ok(())
    }
    match &job.spec {
        JobSpec::Edit(j) => unique("edits", j.edits.iter().map(|e| e.attribute.as_str()))?,
        JobSpec::Augment(j) => {
            unique("attributes", j.attributes.iter().map(|a| a.attribute.as_str()))?;
            if let Some(r) = j.attributes.iter().find(|r| r.min > r.max) {
                return Err(JobError::Invalid(format!(
                    "attribute {}: min {} is above max {}",
                    quote(&r.attribute),
                    r.min,
                    r.max
                )));
            }
        }
        _ => {}
    }
    Ok(())
}

fn check_limits(job: &Job, limits: &JobLimits) -> Result<(), JobError> {
    fn over<T: PartialOrd + fmt::Display>(what: &'static str, v: T, limit: T) -> Result<(), JobError> {
        if v > limit {
            return Err(JobError::OverLimit { what, value: v.to_string(), limit: limit.to_string() });
        }
        Ok(())
    }
    let strength = |s: f64| over("|strength|", s.abs(), limits.max_strength);
    match &job.spec {
        JobSpec::Edit(j) => {
            over("the number of edits", j.edits.len(), limits.max_edits)?;
            j.edits.iter().try_for_each(|e| strength(e.strength))?;
        }
        JobSpec::Augment(j) => {
            over("variants", j.variants, limits.max_variants)?;
            over("the number of attributes", j.attributes.len(), limits.max_attributes)?;
            j.attributes.iter().try_for_each(|r| strength(r.min).and_then(|_| strength(r.max)))?;
        }
        JobSpec::Interpolate(j) => over("frames", j.frames, limits.max_frames)?,
        JobSpec::Sample(j) => over("n", j.n, limits.max_samples)?,
        JobSpec::Encode(_) => {}
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Schemas

/// The three embedded schemas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaName {
    Job,
    Result,
    Manifest,
}

impl SchemaName {
    pub fn text(self) -> &'static str {
        match self {
            SchemaName::Job => JOB_SCHEMA,
            SchemaName::Result => RESULT_SCHEMA,
            SchemaName::Manifest => MANIFEST_SCHEMA,
        }
    }

    fn file(self) -> &'static str {
        match self {
            SchemaName::Job => "job.v1.json",
            SchemaName::Result => "result.v1.json",
            SchemaName::Manifest => "manifest.v1.json",
        }
    }
}

/// Compiles an embedded schema (draft 2020-12, offline: the job schema is registered so the others can `$ref`
/// it, and nothing is fetched).
fn compile(name: SchemaName) -> Result<jsonschema::Validator, JobConfigError> {
    let err = |message: String| JobConfigError::Schema { name: name.file(), message };
    let parse = |text: &str| serde_json::from_str::<Value>(text).map_err(|e| err(e.to_string()));
    let job = parse(JOB_SCHEMA)?;
    let registry = jsonschema::Registry::new()
        .add(JOB_SCHEMA_ID, job)
        .and_then(|r| r.prepare())
        .map_err(|e| err(e.to_string()))?;
    jsonschema::draft202012::options()
        .with_registry(&registry)
        .build(&parse(name.text())?)
        .map_err(|e| err(e.to_string()))
}

/// The schema's complaints, as one readable line: up to [`MAX_SCHEMA_ERRORS_LISTED`], each with where in the
/// document, instance values masked so caller data is not echoed into headers.
fn schema_errors(validator: &jsonschema::Validator, value: &Value) -> Result<(), String> {
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| {
            let at = e.instance_path().to_string();
            let at = if at.is_empty() { "/".to_string() } else { at };
            format!("at {at}: {}", e.masked())
        })
        .collect();
    if errors.is_empty() {
        return Ok(());
    }
    let mut line = errors.iter().take(MAX_SCHEMA_ERRORS_LISTED).cloned().collect::<Vec<_>>().join("; ");
    if errors.len() > MAX_SCHEMA_ERRORS_LISTED {
        line.push_str(&format!("; and {} more", errors.len() - MAX_SCHEMA_ERRORS_LISTED));
    }
    Err(line)
}

/// Validates any document against one of the embedded schemas; the error lists the violations. For the daemon's
/// self-checks of what it writes and for tests.
pub fn validate(name: SchemaName, value: &Value) -> Result<(), String> {
    static COMPILED: OnceLock<[jsonschema::Validator; 3]> = OnceLock::new();
    let all = COMPILED.get_or_init(|| {
        [SchemaName::Job, SchemaName::Result, SchemaName::Manifest]
            .map(|n| compile(n).unwrap_or_else(|e| panic!("embedded schema: {e}")))
    });
    let v = match name {
        SchemaName::Job => &all[0],
        SchemaName::Result => &all[1],
        SchemaName::Manifest => &all[2],
    };
    schema_errors(v, value)
}

// ---------------------------------------------------------------------------------------------------------------
// Output keys

/// Where a job's outputs go: `<root>/<job id>/` (or `<job id>/` when the root is empty). Deterministic, so a
/// redelivered job writes the same keys. `root` comes from the pipeline file and is checked there with
/// [`check_key`]; a trailing `/` on it is ignored.
pub fn output_prefix(root: &str, job: &Job) -> String {
    let root = root.trim_end_matches('/');
    if root.is_empty() {
        format!("{}/", job.id)
    } else {
        format!("{root}/{}/", job.id)
    }
}

/// Every key the job writes, in order, then the manifest's last (it is written after the rest are durable).
pub fn output_keys(root: &str, job: &Job) -> Vec<String> {
    let prefix = output_prefix(root, job);
    let mut keys: Vec<String> = job.output_names().iter().map(|n| format!("{prefix}{n}")).collect();
    keys.push(format!("{prefix}{MANIFEST_NAME}"));
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edit_json() -> Value {
        serde_json::json!({
            "version": 1, "id": "job-1", "kind": "edit", "model": {"name": "celeba64", "version": "1"},
            "input": "s3://images/celeba/000001.png", "edits": [{"attribute": "Smiling", "strength": 0.8}]
        })
    }

    fn parse_value(v: &Value) -> Result<Job, JobError> {
        parse_job(&serde_json::to_vec(v).unwrap())
    }

    #[test]
    fn gates_report_their_kind() {
        assert_eq!(parse_job(b"{").unwrap_err().kind(), "not_json");
        assert_eq!(parse_job(b"[]").unwrap_err().kind(), "schema");
        let mut v = edit_json();
        v["version"] = 2.into();
        assert_eq!(parse_value(&v).unwrap_err().kind(), "unknown_version");
        let mut v = edit_json();
        v["kind"] = "paint".into();
        assert_eq!(parse_value(&v).unwrap_err().kind(), "unknown_kind");
        let mut v = edit_json();
        v["output_key"] = "s3://images/elsewhere.png".into();
        let e = parse_value(&v).unwrap_err();
        assert_eq!(e.kind(), "schema");
        assert!(e.to_string().contains("output_key"), "{e}");
        let big = vec![b' '; DEFAULT_MAX_PAYLOAD_BYTES + 1];
        assert_eq!(parse_job(&big).unwrap_err().kind(), "too_large");
        assert!(parse_job(&big).unwrap_err().disposition() == Disposition::DeadLetter);
    }

    #[test]
    fn integral_floats_are_integers_as_in_the_schema() {
        let v = serde_json::json!({"version": 1.0, "id": "s", "kind": "sample", "model": {"name": "m", "version": "1"}, "n": 3.0});
        let job = parse_value(&v).unwrap();
        assert!(matches!(job.spec, JobSpec::Sample(SampleJob { n: 3, .. })));
        let v = serde_json::json!({"version": 1, "id": "s", "kind": "sample", "model": {"name": "m", "version": "1"}, "n": 3.5});
        assert_eq!(parse_value(&v).unwrap_err().kind(), "schema");
    }

    #[test]
    fn seed_is_derived_from_the_id_and_recorded() {
        let v = serde_json::json!({"version": 1, "id": "s-1", "kind": "sample", "model": {"name": "m", "version": "1"}, "n": 2});
        let a = parse_value(&v).unwrap();
        let b = parse_value(&v).unwrap();
        assert_eq!(a.seed(), b.seed());
        let JobSpec::Sample(s) = &a.spec else { panic!() };
        assert_eq!(s.seed, Some(derived_seed(&a.id)));
        assert!(s.seed.unwrap() <= MAX_SEED);
        let mut v2 = v.clone();
        v2["id"] = "s-2".into();
        assert_ne!(parse_value(&v2).unwrap().seed(), a.seed());
    }

    #[test]
    fn configured_limits_tighten_but_never_loosen() {
        let strict = JobParser::new(JobLimits { max_edits: 1, max_strength: 0.5, ..JobLimits::default() }).unwrap();
        let e = strict.parse(&serde_json::to_vec(&edit_json()).unwrap()).unwrap_err();
        assert_eq!(e.kind(), "over_limit");
        assert!(e.to_string().contains("strength"), "{e}");
        assert!(JobParser::new(JobLimits { max_frames: 1000, ..JobLimits::default() }).is_err());
        assert!(JobParser::new(JobLimits { max_payload_bytes: 10, ..JobLimits::default() }).is_err());
    }

    #[test]
    fn confinement_applies_to_every_input() {
        let parser = JobParser::new(JobLimits::default())
            .unwrap()
            .confine_inputs(vec![AllowedPrefix::new("images", "celeba/").unwrap()]);
        let ok = serde_json::to_vec(&edit_json()).unwrap();
        assert!(parser.parse(&ok).is_ok());
        let mut v = edit_json();
        v["input"] = "s3://images/private/a.png".into();
        assert_eq!(parser.parse(&serde_json::to_vec(&v).unwrap()).unwrap_err().kind(), "forbidden_key");
        let v = serde_json::json!({
            "version": 1, "id": "i", "kind": "interpolate", "model": {"name": "m", "version": "1"},
            "inputs": ["s3://images/celeba/a.png", "s3://images/celeba/../b.png"], "frames": 4
        });
        assert_eq!(parser.parse(&serde_json::to_vec(&v).unwrap()).unwrap_err().kind(), "forbidden_key");
        let empty = JobParser::new(JobLimits::default()).unwrap().confine_inputs(vec![]);
        assert_eq!(empty.parse(&ok).unwrap_err().kind(), "forbidden_key");
    }

    #[test]
    fn rules_the_schema_cannot_state() {
        let mut v = edit_json();
        v["edits"] = serde_json::json!([{"attribute": "Smiling", "strength": 1}, {"attribute": "Smiling", "strength": -1}]);
        assert_eq!(parse_value(&v).unwrap_err().kind(), "invalid");
        let v = serde_json::json!({
            "version": 1, "id": "a", "kind": "augment", "model": {"name": "m", "version": "1"},
            "input": "s3://images/a.png", "variants": 2, "attributes": [{"attribute": "Smiling", "min": 1, "max": -1}]
        });
        assert_eq!(parse_value(&v).unwrap_err().kind(), "invalid");
    }

    #[test]
    fn ids_that_would_escape_their_prefix_are_refused() {
        for id in [".", "..", "a/b", "", "a b", "ü"] {
            assert!(JobId::new(id).is_err(), "{id:?}");
            let mut v = edit_json();
            v["id"] = id.into();
            assert_eq!(parse_value(&v).unwrap_err().kind(), "schema", "{id:?}");
        }
        assert!(JobId::new("a".repeat(128)).is_ok());
        assert!(JobId::new("a".repeat(129)).is_err());
        assert!(JobId::new("...").is_ok());
    }

    #[test]
    fn output_keys_derive_from_the_id_only() {
        let job = parse_value(&edit_json()).unwrap();
        assert_eq!(output_prefix("out/edits/", &job), "out/edits/job-1/");
        assert_eq!(output_prefix("", &job), "job-1/");
        assert_eq!(output_keys("out", &job), vec!["out/job-1/edited.png", "out/job-1/manifest.json"]);
    }

    #[test]
    fn peek_id_survives_bad_jobs() {
        assert_eq!(peek_id(br#"{"id": "x-1", "kind": "nope"}"#, 1024).unwrap().as_str(), "x-1");
        assert!(peek_id(br#"{"id": "../x"}"#, 1024).is_none());
        assert!(peek_id(b"garbage", 1024).is_none());
    }

    #[test]
    fn the_parser_can_be_shared_across_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<JobParser>();
        shareable::<Job>();
        shareable::<JobError>();
    }

    #[test]
    fn quoted_caller_text_is_short_and_printable() {
        let q = quote(&format!("a\u{0}\n{}", "x".repeat(500)));
        assert!(q.len() < 100 && !q.chars().any(char::is_control), "{q}");
    }
}
