//! Unit tests of the job contract.
use super::*;
use serde_json::Value;

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
