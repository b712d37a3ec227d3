//! `glowd submit`: one job per image under an S3 prefix, built from the pipeline file's `[submit]` template.
//! Job and run ids are deterministic, so submitting the same run again enqueues the same ids, which the daemon
//! writes idempotently (create-only outputs), and `--resume` can skip the images whose manifest already exists.
//! This module is pure (ids, templates, checks); the S3 and Kafka calls are in `cli::tools`.
use crate::job::{validate, SchemaName};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The `[submit]` table of a pipeline file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitSettings {
    /// The job every image gets, without `version`, `id`, `run` and `input` (submit fills those in): `kind`,
    /// `model`, and the kind's fields (`edits`, `write_latents`, `variants`, `attributes`, …). Checked against the
    /// job schema before anything is listed.
    pub job: toml::Table,
    /// Prefix listed when `--prefix` is not given (`s3://bucket/path/`).
    #[serde(default)]
    pub prefix: Option<String>,
    /// Object name endings that count as images (case-insensitive); other objects are skipped.
    #[serde(default = "default_extensions")]
    pub extensions: Vec<String>,
    /// Most jobs enqueued per second (the daemon's intake is bounded anyway; this keeps a 200k-image run from
    /// flooding the topic faster than consumers could ever read it).
    #[serde(default = "default_rate")]
    pub rate_per_second: f64,
}

fn default_extensions() -> Vec<String> {
    ["png", "jpg", "jpeg", "webp"].iter().map(|s| s.to_string()).collect()
}

fn default_rate() -> f64 {
    1000.0
}

/// The `[dataset]` table: how `glowd dataset` shards a run's latents into Parquet.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatasetSettings {
    /// Rows per Parquet file.
    pub rows_per_shard: usize,
    /// Add one `score_<attribute>` column per direction of the model (projection of the latent on it).
    pub attribute_scores: bool,
}

impl Default for DatasetSettings {
    fn default() -> Self {
        DatasetSettings { rows_per_shard: 10_000, attribute_scores: true }
    }
}

fn hex16(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The run id: the one given, or a hash of the prefix and the job template, so the same submission of the same
/// prefix is the same run.
pub fn run_id(explicit: Option<&str>, prefix: &str, template: &Value) -> String {
    match explicit {
        Some(r) => r.to_string(),
        None => format!("run-{}", hex16(format!("{prefix}\n{template}").as_bytes())),
    }
}

/// A job's id: the run and a hash of the job template and the image's URI (ids are key segments:
/// `[A-Za-z0-9._-]`, at most 128). The template is in the hash even when the run id is given (`--run`): the same
/// run id with another template (another `--attr`, an edited pipeline file) is other work, and under the same ids
/// the daemon would refuse it (`id_conflict`) instead of running it.
pub fn job_id(run: &str, template: &Value, uri: &str) -> String {
    format!("{run}-{}", hex16(format!("{template}\n{uri}").as_bytes()))
}

/// The template as JSON, with `--attr NAME=STRENGTH` overrides replacing the template's `edits` (edit jobs).
pub fn template(settings: &SubmitSettings, attrs: &[(String, f64)]) -> Result<Value, String> {
    let mut t = serde_json::to_value(&settings.job).map_err(|e| format!("submit.job: {e}"))?;
    for reserved in ["version", "id", "run", "input"] {
        if t.get(reserved).is_some() {
            return Err(format!("submit.job.{reserved}: set by glowd submit, not by the pipeline file"));
        }
    }
    if !attrs.is_empty() {
        if t["kind"] != "edit" {
            return Err(format!("--attr applies to edit jobs; submit.job.kind is {}", t["kind"]));
        }
        t["edits"] = attrs.iter().map(|(a, s)| json!({"attribute": a, "strength": s})).collect();
    }
    Ok(t)
}

/// One image's job, checked against the job schema.
pub fn job(template: &Value, run: &str, uri: &str) -> Result<Value, String> {
    let mut v = template.clone();
    v["version"] = json!(1);
    v["id"] = json!(job_id(run, template, uri));
    v["run"] = json!(run);
    v["input"] = json!(uri);
    validate(SchemaName::Job, &v).map_err(|e| format!("submit.job: {e}"))?;
    Ok(v)
}

/// `--attr Smiling=+0.8`.
pub fn parse_attr(s: &str) -> Result<(String, f64), String> {
    let (name, value) = s.split_once('=').ok_or_else(|| format!("`{s}`: expected NAME=STRENGTH"))?;
    let strength = value.trim().parse::<f64>().map_err(|e| format!("`{s}`: {e}"))?;
    Ok((name.trim().to_string(), strength))
}

/// Whether a key names an image by its ending.
pub fn is_image(key: &str, extensions: &[String]) -> bool {
    let lower = key.to_ascii_lowercase();
    extensions.iter().any(|e| lower.ends_with(&format!(".{}", e.trim_start_matches('.').to_ascii_lowercase())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(job: &str) -> SubmitSettings {
        toml::from_str(&format!("job = {job}")).unwrap()
    }

    #[test]
    fn ids_are_deterministic_and_valid_and_jobs_match_the_schema() {
        let s = settings(r#"{ kind = "edit", model = { name = "faces", version = "1" }, edits = [{ attribute = "Smiling", strength = 0.5 }] }"#);
        let t = template(&s, &[]).unwrap();
        let run = run_id(None, "s3://bkt/in/", &t);
        assert_eq!(run, run_id(None, "s3://bkt/in/", &t));
        assert_ne!(run, run_id(None, "s3://bkt/other/", &t));
        let a = job(&t, &run, "s3://bkt/in/a.png").unwrap();
        assert_eq!(a, job(&t, &run, "s3://bkt/in/a.png").unwrap());
        assert_ne!(a["id"], job(&t, &run, "s3://bkt/in/b.png").unwrap()["id"]);
        assert_eq!(a["run"], json!(run));
        let t2 = template(&s, &[("Eyeglasses".into(), -1.0)]).unwrap();
        assert_eq!(t2["edits"], json!([{"attribute": "Eyeglasses", "strength": -1.0}]));
        // Another template under the same explicit run id (`--run`) gives other job ids: other work never reuses
        // an id (the daemon would refuse it as `id_conflict`).
        let run = run_id(Some("nightly"), "s3://bkt/in/", &t);
        assert_eq!(run_id(Some("nightly"), "s3://bkt/in/", &t2), run);
        assert_ne!(job(&t, &run, "s3://bkt/in/a.png").unwrap()["id"], job(&t2, &run, "s3://bkt/in/a.png").unwrap()["id"]);
        assert_eq!(job(&t, &run, "s3://bkt/in/a.png").unwrap()["id"], job(&t, &run, "s3://bkt/in/a.png").unwrap()["id"]);
    }

    #[test]
    fn bad_templates_are_refused_by_key() {
        let s = settings(r#"{ kind = "edit", model = { name = "faces", version = "1" }, edits = [{ attribute = "Smiling", strength = 99 }] }"#);
        let t = template(&s, &[]).unwrap();
        let e = job(&t, "r", "s3://bkt/in/a.png").unwrap_err();
        assert!(e.contains("submit.job") && e.contains("strength"), "{e}");
        let s = settings(r#"{ kind = "encode", model = { name = "faces", version = "1" }, id = "x" }"#);
        assert!(template(&s, &[]).unwrap_err().contains("submit.job.id"));
        let s = settings(r#"{ kind = "encode", model = { name = "faces", version = "1" } }"#);
        assert!(template(&s, &[("Smiling".into(), 1.0)]).unwrap_err().contains("--attr"));
    }

    #[test]
    fn attrs_and_extensions() {
        assert_eq!(parse_attr("Smiling=+0.8").unwrap(), ("Smiling".to_string(), 0.8));
        assert!(parse_attr("Smiling").is_err());
        let ext = default_extensions();
        assert!(is_image("a/B.JPG", &ext) && is_image("x.webp", &ext) && !is_image("notes.txt", &ext));
    }
}
