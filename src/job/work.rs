//! What a job's outputs are the outputs *of*: the fingerprint of its work, recorded in its manifest and in the
//! claim written before its outputs, so an id that is used again for other work is refused (`id_conflict`) instead
//! of being answered with the first job's outputs.
//!
//! The fingerprint covers what the outputs depend on and the message says: the kind, the model's name and version,
//! the inputs, every parameter (defaults and the derived seed filled in), and the precision the device runs at. It
//! leaves out the job id and run (they name the work, they are not the work) and the weights fingerprint of the
//! model that ran it: a redelivered message after the same model version was redeployed must still be found
//! finished (issue 16, item 6), so the weights are recorded beside it in the manifest (`model.fingerprint`) but do
//! not decide whether two messages ask for the same work.
use super::{Job, JobSpec, ModelRef};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Name of the claim written create-only beside a job's outputs, before them: it holds the work's fingerprint, so a
/// second job under the same id finds it and is refused before it writes anything.
pub const CLAIM_NAME: &str = "work.json";

/// The precision a fingerprint assumes for a record that names none (every device op ran fp32 before precisions
/// were recorded).
pub const LEGACY_PRECISION: &str = "fp32";

/// The work a job's outputs are the result of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Work {
    /// SHA-256 (hex) of the work's description ([`work_fingerprint`]).
    pub fingerprint: String,
    /// The device precision the outputs were computed at (`fp32`, `bf16`).
    pub precision: String,
}

impl Work {
    pub fn of(job: &Job, precision: &str) -> Work {
        Work { fingerprint: work_fingerprint(job, precision), precision: precision.to_string() }
    }
}

/// The fingerprint of a job's work: SHA-256 of the tagged JSON of its model reference, its spec (kind, inputs and
/// parameters, the derived seed filled in) and the precision. The tag versions the scheme: a change to what goes in
/// needs a new tag. Readers never compare recorded fingerprints alone ([`same_work`] recomputes from the recorded
/// job too), so a new tag does not turn old folders into conflicts.
pub fn work_fingerprint(job: &Job, precision: &str) -> String {
    #[derive(Serialize)]
    struct Described<'a> {
        tag: &'static str,
        model: &'a ModelRef,
        spec: &'a JobSpec,
        precision: &'a str,
    }
    let described = Described { tag: "glowd.work.v1", model: &job.model, spec: &job.spec, precision };
    let json = serde_json::to_vec(&described).expect("a job serialises");
    Sha256::digest(&json).iter().map(|b| format!("{b:02x}")).collect()
}

/// A manifest or claim found in a job's folder, read leniently: a record written by another glowd version (a field
/// more or less) is still recognised.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StoredRecord {
    #[serde(default)]
    pub job: Option<serde_json::Value>,
    #[serde(default)]
    pub work: Option<StoredWork>,
    /// A manifest's model block: manifests written before the work was recorded name the precision there.
    #[serde(default)]
    pub model: Option<StoredModel>,
    #[serde(default)]
    pub outputs: Vec<StoredOutput>,
    #[serde(default)]
    pub bits_per_dim: Vec<f64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StoredWork {
    #[serde(default)]
    pub fingerprint: Option<String>,
    #[serde(default)]
    pub precision: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StoredModel {
    #[serde(default)]
    pub precision: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StoredOutput {
    pub key: String,
    #[serde(default)]
    pub bytes: Option<u64>,
}

impl StoredRecord {
    /// The fingerprint the record states, else the one its recorded job gives under this version's scheme (a
    /// manifest written before fingerprints were recorded: at the precision its model block names, else fp32).
    pub fn fingerprint(&self) -> Option<String> {
        self.work.as_ref().and_then(|w| w.fingerprint.clone()).or_else(|| self.recomputed())
    }

    /// The fingerprint of the recorded job and precision under this version's scheme.
    pub fn recomputed(&self) -> Option<String> {
        let job: Job = serde_json::from_value(self.job.clone()?).ok()?;
        let precision = (self.work.as_ref().and_then(|w| w.precision.as_deref()))
            .or(self.model.as_ref().and_then(|m| m.precision.as_deref()))
            .unwrap_or(LEGACY_PRECISION);
        Some(work_fingerprint(&job, precision))
    }

    /// Whether the record is of this work: the same recorded fingerprint, or the same once recomputed from the
    /// recorded job (a record from before fingerprints, or from another version of the scheme).
    pub fn same_work(&self, work: &Work) -> bool {
        let recorded = self.work.as_ref().and_then(|w| w.fingerprint.as_deref());
        recorded == Some(work.fingerprint.as_str()) || self.recomputed().as_deref() == Some(work.fingerprint.as_str())
    }

    /// The size recorded for `key`, if the record lists it.
    pub fn size_of(&self, key: &str) -> Option<u64> {
        self.outputs.iter().find(|o| o.key == key).and_then(|o| o.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::parse_job;

    fn job(extra: &str) -> Job {
        let text = format!(
            r#"{{"version": 1, "id": "same-id", "kind": "edit", "model": {{"name": "faces", "version": "1"}},
                "input": "s3://bkt/a.png", {extra}}}"#
        );
        parse_job(text.as_bytes()).unwrap()
    }

    #[test]
    fn the_fingerprint_follows_the_work_not_the_id() {
        let plus = job(r#""edits": [{"attribute": "Smiling", "strength": 1.0}]"#);
        let minus = job(r#""edits": [{"attribute": "Smiling", "strength": -1.0}]"#);
        let fp = |j: &Job| work_fingerprint(j, "fp32");
        assert_eq!(fp(&plus), fp(&plus.clone()));
        assert_ne!(fp(&plus), fp(&minus), "another strength is other work");
        assert_ne!(fp(&plus), work_fingerprint(&plus, "bf16"), "another precision is other work");
        let mut renamed = plus.clone();
        renamed.id = crate::job::JobId::new("other-id").unwrap();
        renamed.run = Some(crate::job::JobId::new("run-1").unwrap());
        assert_eq!(fp(&plus), fp(&renamed), "the id and run name the work, they are not the work");
        let mut other_model = plus.clone();
        other_model.model.version = "2".into();
        assert_ne!(fp(&plus), fp(&other_model));
        let mut other_input = plus.clone();
        if let JobSpec::Edit(e) = &mut other_input.spec {
            e.input = crate::job::parse_s3_uri("s3://bkt/b.png").unwrap();
        }
        assert_ne!(fp(&plus), fp(&other_input));
        // Defaults filled in: omitting a default or stating it is the same work.
        let explicit = job(r#""edits": [{"attribute": "Smiling", "strength": 1.0}], "format": "png", "write_latents": false"#);
        assert_eq!(fp(&plus), fp(&explicit));
        assert_eq!(fp(&plus).len(), 64);
    }

    #[test]
    fn records_are_matched_by_fingerprint_or_by_their_recorded_job() {
        let plus = job(r#""edits": [{"attribute": "Smiling", "strength": 1.0}]"#);
        let minus = job(r#""edits": [{"attribute": "Smiling", "strength": -1.0}]"#);
        let work = Work::of(&plus, "fp32");
        let record = |v: serde_json::Value| -> StoredRecord { serde_json::from_value(v).unwrap() };
        let job_json = serde_json::to_value(&plus).unwrap();
        // A current record.
        let r = record(serde_json::json!({"job": job_json, "work": work, "outputs": [{"key": "k", "bytes": 3}]}));
        assert!(r.same_work(&work));
        assert!(!r.same_work(&Work::of(&minus, "fp32")));
        assert_eq!(r.size_of("k"), Some(3));
        // A manifest from before fingerprints: recomputed from its job, at fp32.
        let legacy = record(serde_json::json!({"version": 1, "job": job_json, "model": {"name": "faces", "version": "1"}}));
        assert!(legacy.same_work(&work));
        assert!(!legacy.same_work(&Work::of(&plus, "bf16")));
        assert_eq!(legacy.fingerprint(), Some(work.fingerprint.clone()));
        // A manifest that names its precision in its model block only (written before the work was recorded).
        let bf16 = record(serde_json::json!({"job": job_json, "model": {"name": "faces", "version": "1", "precision": "bf16"}}));
        assert!(bf16.same_work(&Work::of(&plus, "bf16")) && !bf16.same_work(&work));
        // A record whose fingerprint came from another scheme but whose job is this work.
        let rehashed = record(serde_json::json!({"job": job_json, "work": {"fingerprint": "00", "precision": "fp32"}}));
        assert!(rehashed.same_work(&work));
    }
}
