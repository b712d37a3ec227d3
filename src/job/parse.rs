//! Per-pipeline limits and the parser that applies every gate in order.
use super::*;
use super::schema::{compile, schema_errors};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeSet;
use std::fmt;
use std::sync::OnceLock;

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

    /// Checks a message through every gate (see the module docs) and returns the job, seed filled in: the
    /// contract ([`JobParser::parse_contract`]), then this pipeline's admission ([`JobParser::admit`]).
    pub fn parse(&self, bytes: &[u8]) -> Result<Job, JobError> {
        let job = self.parse_contract(bytes)?;
        self.admit(&job)?;
        Ok(job)
    }

    /// The gates of the job contract: size, JSON, version, kind, schema, key hygiene (a key that is not a plain
    /// relative key is `forbidden_key` wherever it points), the types and the rules the schema cannot state. What
    /// passes is a well-formed job whose id and work are known, so its output folder can be looked at: a finished
    /// job is found there before this pipeline's current limits and allowed prefixes are applied to it
    /// ([`JobParser::admit`]), and a redelivery after a limit was lowered is still reported done.
    pub fn parse_contract(&self, bytes: &[u8]) -> Result<Job, JobError> {
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
            parse_s3_uri(uri).map_err(|source| JobError::ForbiddenKey { uri: quote(uri), source })?;
        }
        let mut job: Job = serde_json::from_value(value).map_err(|e| JobError::Schema(e.to_string()))?;
        check_rules(&job)?;
        job.fill_derived();
        Ok(job)
    }

    /// This pipeline's admission of a well-formed job: every input under an allowed bucket/prefix pair
    /// (`forbidden_key`), then the configured limits (`over_limit`).
    pub fn admit(&self, job: &Job) -> Result<(), JobError> {
        if let Some(allowed) = &self.allowed_inputs {
            let pairs: Vec<(&str, &str)> = allowed.iter().map(|a| (a.bucket(), a.prefix())).collect();
            for uri in job.inputs() {
                check_key_allowed(&uri.bucket, &uri.key, &pairs)
                    .map_err(|source| JobError::ForbiddenKey { uri: quote(&uri.to_string()), source })?;
            }
        }
        check_limits(job, &self.limits)
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
