//! The job types: ids, kinds, the per-kind job bodies and their serde (a job is checked by [`super::JobParser`]).
use super::*;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use std::fmt;

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
    pub(super) fn fill_derived(&mut self) {
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
