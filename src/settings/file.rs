//! Pipeline files (`pipelines/*.toml`): what the daemon connects to, which models it serves, and the pipeline's
//! bounds. Every table is `deny_unknown_fields`, so a misspelt key is an error naming it. String values may say
//! `${NAME}` to take an environment variable (an unset one is an error), which is how `pipelines/local.toml` finds
//! the dev stack's ports.
use super::{BatchSettings, HttpSettings, ImageSettings, KafkaSettings, Limits, OutputSettings, PipelineSettings, RetrySettings, S3Settings};
use crate::worker::ModelSpec;
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    pub name: String,
    pub version: String,
    /// Model folder (relative paths are relative to the pipeline file).
    pub path: PathBuf,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    kafka: Option<KafkaSettings>,
    s3: Option<S3Settings>,
    #[serde(default)]
    http: HttpSettings,
    #[serde(default)]
    models: Vec<ModelEntry>,
    /// A folder of model folders, found as `glowd run --model-dir` finds them.
    models_dir: Option<PathBuf>,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    images: ImageSettings,
    #[serde(default)]
    batching: BatchSettings,
    #[serde(default)]
    retry: RetrySettings,
    #[serde(default)]
    output: OutputSettings,
    #[serde(default)]
    jobs: crate::job::JobLimits,
    #[serde(default)]
    gate: crate::settings::GateSettings,
    /// `glowd submit`'s job template and pacing.
    submit: Option<crate::tools::submit::SubmitSettings>,
    /// `glowd dataset`'s sharding.
    #[serde(default)]
    dataset: crate::tools::submit::DatasetSettings,
}

/// A loaded, checked pipeline file.
#[derive(Debug, Clone)]
pub struct PipelineFile {
    pub kafka: Option<KafkaSettings>,
    pub s3: Option<S3Settings>,
    pub http: HttpSettings,
    pub models: Vec<ModelSpec>,
    pub pipeline: PipelineSettings,
    pub submit: Option<crate::tools::submit::SubmitSettings>,
    pub dataset: crate::tools::submit::DatasetSettings,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl PipelineFile {
    /// Reads a pipeline file; `GLOWD__<TABLE>__<KEY>=value` environment variables override its settings (see
    /// [`override_from_env`]).
    pub fn load(path: &Path) -> Result<PipelineFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| invalid(path, e.to_string()))?;
        let mut value: toml::Value = toml::from_str(&text).map_err(|e| invalid(path, e.to_string()))?;
        override_from_env(&mut value, std::env::vars()).map_err(|m| invalid(path, m))?;
        Self::from_value(value, path.parent().unwrap_or(Path::new(".")), &|k| std::env::var(k).ok())
            .map_err(|m| invalid(path, m))
    }

    /// For `glowd run` (embedded mode): the same file less its [kafka], [s3] and [http] tables and output bucket,
    /// which that mode does not use, so their `${NAME}` variables need not be set.
    pub fn load_embedded(path: &Path) -> Result<PipelineFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| invalid(path, e.to_string()))?;
        Self::parse_embedded(&text, path.parent().unwrap_or(Path::new(".")), &|k| std::env::var(k).ok())
            .map_err(|m| invalid(path, m))
    }

    pub fn parse_embedded(
        text: &str,
        base: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<PipelineFile, String> {
        let mut value: toml::Value = toml::from_str(text).map_err(|e| e.to_string())?;
        override_from_env(&mut value, std::env::vars())?;
        if let Some(t) = value.as_table_mut() {
            for service in ["kafka", "s3", "http"] {
                t.remove(service);
            }
            if let Some(output) = t.get_mut("output").and_then(toml::Value::as_table_mut) {
                output.remove("bucket");
            }
        }
        Self::from_value(value, base, env)
    }

    /// Parses a pipeline file's text; `base` resolves relative model paths, `env` answers `${NAME}`.
    pub fn parse(text: &str, base: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<PipelineFile, String> {
        Self::from_value(toml::from_str(text).map_err(|e| e.to_string())?, base, env)
    }

    fn from_value(
        mut value: toml::Value,
        base: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<PipelineFile, String> {
        expand(&mut value, env, "")?;
        let raw: RawFile = value.try_into().map_err(|e: toml::de::Error| e.to_string())?;
        let mut models: Vec<ModelSpec> = raw
            .models
            .iter()
            .map(|m| ModelSpec { name: m.name.clone(), version: m.version.clone(), path: base.join(&m.path) })
            .collect();
        if let Some(dir) = &raw.models_dir {
            let found = crate::worker::discover_models(&base.join(dir)).map_err(|e| format!("models_dir: {e}"))?;
            models.extend(found);
        }
        let pipeline = PipelineSettings {
            limits: raw.limits,
            images: raw.images,
            batching: raw.batching,
            retry: raw.retry,
            output: raw.output,
            jobs: raw.jobs,
            gate: raw.gate,
        };
        pipeline.check()?;
        let silence = raw.http.max_poll_silence_seconds;
        if !(silence.is_finite() && silence > 0.0) {
            return Err(format!("http.max_poll_silence_seconds = {silence}: must be a positive number of seconds"));
        }
        if let Some(s3) = &raw.s3 {
            for a in &s3.allowed_inputs {
                crate::job::AllowedPrefix::new(&a.bucket, &a.prefix).map_err(|e| format!("s3.allowed_inputs: {e}"))?;
            }
        }
        Ok(PipelineFile {
            kafka: raw.kafka,
            s3: raw.s3,
            http: raw.http,
            models,
            pipeline,
            submit: raw.submit,
            dataset: raw.dataset,
        })
    }

    /// The daemon's allowed input prefixes.
    pub fn allowed_inputs(&self) -> Vec<crate::job::AllowedPrefix> {
        self.s3
            .iter()
            .flat_map(|s| s.allowed_inputs.iter())
            .filter_map(|a| crate::job::AllowedPrefix::new(&a.bucket, &a.prefix).ok())
            .collect()
    }
}

fn invalid(path: &Path, message: String) -> ConfigError {
    ConfigError::Invalid { path: path.display().to_string(), message }
}

/// Environment overrides, the way a Deployment or CronJob tunes one file: `GLOWD__LIMITS__MAX_IN_FLIGHT_JOBS=8`
/// sets `[limits] max_in_flight_jobs = 8`, `GLOWD__KAFKA__BROKERS=b:9092` sets `[kafka] brokers`. The path is
/// lower-cased; the value is read as a TOML value (number, boolean, array) and otherwise taken as a string. The
/// result is checked like the file itself, so a misspelt key is still an error naming it.
pub fn override_from_env(
    value: &mut toml::Value,
    vars: impl Iterator<Item = (String, String)>,
) -> Result<(), String> {
    for (name, raw) in vars {
        let Some(path) = name.strip_prefix("GLOWD__") else { continue };
        let keys: Vec<String> = path.split("__").map(|k| k.to_ascii_lowercase()).collect();
        if keys.iter().any(String::is_empty) {
            return Err(format!("{name}: empty key segment"));
        }
        // librdkafka properties are strings whatever they look like, and a secret's value must never be parsed: a
        // parse into the wrong type would echo it in the error ("invalid type: integer `123456`").
        let verbatim = keys.first().is_some_and(|k| k == "kafka") && keys.get(1).is_some_and(|k| k == "properties")
            || keys.iter().any(|k| crate::settings::is_secret_property(k));
        let parsed = if verbatim {
            toml::Value::String(raw.clone())
        } else {
            toml::from_str::<toml::Table>(&format!("v = {raw}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(raw.clone()))
        };
        let mut table = value.as_table_mut().ok_or("a pipeline file is a table")?;
        for k in &keys[..keys.len() - 1] {
            table = table
                .entry(k.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .ok_or_else(|| format!("{name}: `{k}` is not a table"))?;
        }
        table.insert(keys[keys.len() - 1].clone(), parsed);
    }
    Ok(())
}

/// Replaces `${NAME}` in every string value.
fn expand(v: &mut toml::Value, env: &dyn Fn(&str) -> Option<String>, at: &str) -> Result<(), String> {
    match v {
        toml::Value::String(s) => {
            let mut out = String::new();
            let mut rest = s.as_str();
            while let Some(i) = rest.find("${") {
                out.push_str(&rest[..i]);
                let end = rest[i..].find('}').ok_or_else(|| format!("{at}: unclosed `${{`"))?;
                let name = &rest[i + 2..i + end];
                let value = env(name).ok_or_else(|| format!("{at}: environment variable {name} is not set"))?;
                out.push_str(&value);
                rest = &rest[i + end + 1..];
            }
            out.push_str(rest);
            *s = out;
        }
        toml::Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                let at = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
                expand(v, env, &at)?;
            }
        }
        toml::Value::Array(a) => {
            for (i, v) in a.iter_mut().enumerate() {
                expand(v, env, &format!("{at}[{i}]"))?;
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_redacts_secret_properties() {
        let text = "[kafka]\nbrokers = \"b:1\"\ngroup = \"g\"\njobs_topic = \"j\"\nresults_topic = \"r\"\ndlq_topic = \"d\"\n\
                    [kafka.properties]\n\"sasl.password\" = \"canary-pw-1\"\n\"ssl.key.password\" = \"canary-pw-2\"\n\
                    \"sasl.username\" = \"alice\"\n";
        let f = PipelineFile::parse(text, Path::new("."), &|_| None).unwrap();
        let shown = format!("{:?} {:#?}", f.kafka, f.kafka);
        assert!(!shown.contains("canary-pw"), "{shown}");
        assert!(shown.contains("<redacted>") && shown.contains("alice"), "{shown}");
    }

    #[test]
    fn unknown_keys_are_named_and_env_is_expanded() {
        let env = |k: &str| (k == "B").then(|| "127.0.0.1:9".to_string());
        let ok = "[kafka]\nbrokers = \"${B}\"\ngroup = \"g\"\njobs_topic = \"j\"\nresults_topic = \"r\"\ndlq_topic = \"d\"\n";
        let f = PipelineFile::parse(ok, Path::new("."), &env).unwrap();
        assert_eq!(f.kafka.unwrap().brokers, "127.0.0.1:9");
        let e = PipelineFile::parse("[limits]\nmax_in_flight = 3\n", Path::new("."), &env).unwrap_err();
        assert!(e.contains("max_in_flight"), "{e}");
        let e = PipelineFile::parse("[batching]\nmax_batch = 0\n", Path::new("."), &env).unwrap_err();
        assert!(e.contains("batching.max_batch"), "{e}");
        let e = PipelineFile::parse("[output]\nprefix = \"${NOPE}\"\n", Path::new("."), &env).unwrap_err();
        assert!(e.contains("NOPE") && e.contains("output.prefix"), "{e}");
        assert_eq!(PipelineFile::parse("", Path::new("."), &env).unwrap().http.max_poll_silence_seconds, 60.0);
        let e = PipelineFile::parse("[http]\nmax_poll_silence_seconds = 0\n", Path::new("."), &env).unwrap_err();
        assert!(e.contains("http.max_poll_silence_seconds"), "{e}");
    }
}

#[cfg(test)]
mod env_overrides {
    #[test]
    fn glowd_variables_override_keys_and_misspellings_still_fail() {
        let text = "[limits]\nmax_in_flight_jobs = 64\n[output]\nprefix = \"out\"\n";
        let mut v: toml::Value = toml::from_str(text).unwrap();
        let vars = [
            ("GLOWD__LIMITS__MAX_IN_FLIGHT_JOBS", "8"),
            ("GLOWD__OUTPUT__PREFIX", "nightly/2026"),
            ("GLOWD__BATCHING__DEVICES", "[\"cuda:0\", \"cuda:1\"]"),
            ("GLOWD__BATCHING__PRECISION", "bf16"),
            ("HOME", "/root"),
        ];
        super::override_from_env(&mut v, vars.iter().map(|(a, b)| (a.to_string(), b.to_string()))).unwrap();
        let f = super::PipelineFile::from_value(v, std::path::Path::new("."), &|_| None).unwrap();
        assert_eq!(f.pipeline.limits.max_in_flight_jobs, 8);
        assert_eq!(f.pipeline.output.prefix, "nightly/2026");
        assert_eq!(f.pipeline.batching.devices, ["cuda:0", "cuda:1"]);
        assert_eq!(f.pipeline.batching.precision, crate::precision::Precision::Bf16);
        let mut v: toml::Value = toml::from_str(text).unwrap();
        super::override_from_env(&mut v, std::iter::once(("GLOWD__LIMITS__MAX_INFLIGHT".into(), "3".into()))).unwrap();
        let e = super::PipelineFile::from_value(v, std::path::Path::new("."), &|_| None).unwrap_err();
        assert!(e.contains("max_inflight"), "{e}");
    }

    #[test]
    fn kafka_properties_and_secrets_stay_strings_and_are_never_echoed() {
        let text = "[kafka]\nbrokers = \"b:9092\"\ngroup = \"g\"\njobs_topic = \"j\"\nresults_topic = \"r\"\ndlq_topic = \"d\"\n";
        let mut v: toml::Value = toml::from_str(text).unwrap();
        // Both parse as TOML integers; a properties map takes strings, and an error would have echoed the password.
        let vars = [("GLOWD__KAFKA__PROPERTIES__SASL.PASSWORD", "123456"), ("GLOWD__KAFKA__PROPERTIES__LINGER.MS", "5")];
        super::override_from_env(&mut v, vars.iter().map(|(a, b)| (a.to_string(), b.to_string()))).unwrap();
        let f = super::PipelineFile::from_value(v, std::path::Path::new("."), &|_| None).unwrap();
        let k = f.kafka.unwrap();
        assert_eq!(k.properties["sasl.password"], "123456");
        assert_eq!(k.properties["linger.ms"], "5");
    }
}

#[cfg(test)]
mod local_file {
    #[test]
    fn embedded_mode_reads_pipelines_local_toml_without_the_services_variables() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
        let text = std::fs::read_to_string(dir.join("local.toml")).unwrap();
        let e = super::PipelineFile::parse(&text, &dir, &|_| None).unwrap_err();
        assert!(e.contains("KAFKA_BROKERS"), "{e}");
        let f = super::PipelineFile::parse_embedded(&text, &dir, &|_| None).unwrap();
        assert!(f.kafka.is_none() && f.s3.is_none());
        assert!(!f.models.is_empty());
        assert!(f.pipeline.output.bucket.is_empty() && f.pipeline.output.prefix == "outputs");
        // Still strict about what it keeps.
        let bad = text.replace("[output]", "[output]\nprefx = \"x\"");
        let e = super::PipelineFile::parse_embedded(&bad, &dir, &|_| None).unwrap_err();
        assert!(e.contains("prefx"), "{e}");
    }

    #[test]
    fn pipelines_local_toml_parses() {
        let env = |k: &str| match k {
            "KAFKA_BROKERS" => Some("127.0.0.1:9092".to_string()),
            "S3_ENDPOINT" => Some("http://127.0.0.1:9000".to_string()),
            "S3_BUCKET" => Some("glowd".to_string()),
            "AWS_REGION" => Some("us-east-1".to_string()),
            _ => None,
        };
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
        let text = std::fs::read_to_string(dir.join("local.toml")).unwrap();
        let f = super::PipelineFile::parse(&text, &dir, &env).unwrap();
        assert_eq!(f.kafka.unwrap().jobs_topic, "glowd.jobs");
        assert_eq!(f.pipeline.images.crop, Some([10, 25, 80, 95]));
        assert_eq!(f.models, crate::worker::discover_models(&dir.join("../models")).unwrap());
    }
}
