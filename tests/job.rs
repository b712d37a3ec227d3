//! The job contract: the schema files in `schemas/` and the Rust types in `src/job/` must agree, and object keys
//! must stay inside their buckets and prefixes (G15 in docs/reliability.md: every valid sample accepted, every corpus entry
//! rejected). The examples live in `schemas/examples/` (see its README for the naming rule).
use glowd::job::{
    check_key_allowed, output_keys, parse_job, validate, Job, JobError, JobLimits, JobParser, JobResult, JobSpec,
    Manifest, MediaType, ModelProvenance, OutputEntry, SchemaName, SourcePosition, Stage, Timings, JOB_KINDS,
    JOB_SCHEMA, SCHEMA_MAX_ATTRIBUTES, SCHEMA_MAX_EDITS, SCHEMA_MAX_FRAMES, SCHEMA_MAX_SAMPLES, SCHEMA_MAX_STRENGTH,
    SCHEMA_MAX_VARIANTS,
};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/examples")
}

fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

fn valid_examples() -> Vec<(String, Vec<u8>, Value)> {
    json_files(&examples_dir())
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            let value = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", name(&p)));
            (name(&p), bytes, value)
        })
        .collect()
}

/// JSON equality with numbers compared as numbers (`1` in a message is `1.0` once it has been an `f64`).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

fn job_schema() -> Value {
    serde_json::from_str(JOB_SCHEMA).unwrap()
}

#[test]
fn every_valid_example_passes_the_schema_and_the_types_and_round_trips() {
    let examples = valid_examples();
    assert!(examples.len() >= JOB_KINDS.len());
    for (file, bytes, value) in &examples {
        validate(SchemaName::Job, value).unwrap_or_else(|e| panic!("{file}: schema: {e}"));
        let job = parse_job(bytes).unwrap_or_else(|e| panic!("{file}: parse_job: {e}"));
        let back = serde_json::to_value(&job).unwrap();
        validate(SchemaName::Job, &back).unwrap_or_else(|e| panic!("{file}: serialised Rust value fails the schema: {e}\n{back}"));
        let again: Job = serde_json::from_value(back.clone()).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(again, job, "{file}: serialise → deserialise changed the job");
        let reparsed = parse_job(&serde_json::to_vec(&back).unwrap()).unwrap();
        assert_eq!(reparsed, job, "{file}: parse_job is not idempotent on its own output");
        // Everything the message said survives (the Rust value may only add defaults and the seed).
        for (k, v) in value.as_object().unwrap() {
            assert!(same(&back[k], v), "{file}: field `{k}` changed on the way through the types: {v} → {}", back[k]);
        }
    }
}

#[test]
fn examples_cover_every_kind_and_every_schema_field() {
    let schema = job_schema();
    let mut used: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (_, _, value) in valid_examples() {
        let kind = value["kind"].as_str().unwrap().to_string();
        used.entry(kind).or_default().extend(value.as_object().unwrap().keys().cloned());
    }
    assert_eq!(used.len(), JOB_KINDS.len(), "every kind needs an example: {:?}", used.keys());
    let common: BTreeSet<String> = schema["properties"].as_object().unwrap().keys().cloned().collect();
    let all_used: BTreeSet<String> = used.values().flatten().cloned().collect();
    assert!(common.is_subset(&all_used), "common fields never used by an example: {:?}", common.difference(&all_used));
    for kind in JOB_KINDS {
        // `true` entries are the common fields, listed only to close the object; they are checked above.
        let props: BTreeSet<String> = schema["$defs"][kind]["properties"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, v)| **v != Value::Bool(true))
            .map(|(k, _)| k.clone())
            .collect();
        let missing: Vec<_> = props.difference(&used[kind]).collect();
        assert!(missing.is_empty(), "{kind}: schema fields no example uses (so the types are untested on them): {missing:?}");
    }
}

/// The schema's `default` annotations and the Rust defaults must be the same values.
#[test]
fn schema_defaults_are_the_rust_defaults() {
    let schema = job_schema();
    let resolve_default = |prop: &Value| -> Option<Value> {
        if let Some(d) = prop.get("default") {
            return Some(d.clone());
        }
        let r = prop.get("$ref")?.as_str()?.strip_prefix("#/$defs/")?;
        schema["$defs"][r].get("default").cloned()
    };
    let mut checked = 0;
    for (file, bytes, value) in valid_examples() {
        let kind = value["kind"].as_str().unwrap();
        let back = serde_json::to_value(parse_job(&bytes).unwrap()).unwrap();
        for (field, prop) in schema["$defs"][kind]["properties"].as_object().unwrap() {
            if value.get(field).is_some() {
                continue;
            }
            if let Some(default) = resolve_default(prop) {
                assert!(same(&back[field], &default), "{file}: `{field}` omitted: Rust filled {} but the schema says {default}", back[field]);
                checked += 1;
            }
        }
    }
    assert!(checked >= 6, "the minimal examples should exercise the defaults ({checked} checked)");
}

/// The Rust constants that name the ceilings are the schema's numbers.
#[test]
fn schema_ceilings_are_the_rust_constants() {
    let s = job_schema();
    let d = &s["$defs"];
    assert_eq!(d["edit"]["properties"]["edits"]["maxItems"], json!(SCHEMA_MAX_EDITS));
    assert_eq!(d["augment"]["properties"]["attributes"]["maxItems"], json!(SCHEMA_MAX_ATTRIBUTES));
    assert_eq!(d["augment"]["properties"]["variants"]["maximum"], json!(SCHEMA_MAX_VARIANTS));
    assert_eq!(d["interpolate"]["properties"]["frames"]["maximum"], json!(SCHEMA_MAX_FRAMES));
    assert_eq!(d["sample"]["properties"]["n"]["maximum"], json!(SCHEMA_MAX_SAMPLES));
    assert_eq!(d["strength"]["maximum"].as_f64(), Some(SCHEMA_MAX_STRENGTH));
    assert_eq!(d["strength"]["minimum"].as_f64(), Some(-SCHEMA_MAX_STRENGTH));
    assert_eq!(d["id"]["maxLength"], json!(glowd::job::MAX_ID_CHARS));
    assert_eq!(d["seed"]["maximum"], json!(glowd::job::MAX_SEED));
    assert_eq!(s["properties"]["kind"]["enum"], json!(JOB_KINDS));
    // The defaults of JobLimits are the ceilings (max_strength excepted, as documented), and pass their own check.
    let l = JobLimits::default();
    assert_eq!((l.max_edits, l.max_attributes), (SCHEMA_MAX_EDITS, SCHEMA_MAX_ATTRIBUTES));
    assert_eq!((l.max_variants, l.max_frames, l.max_samples), (SCHEMA_MAX_VARIANTS, SCHEMA_MAX_FRAMES, SCHEMA_MAX_SAMPLES));
    l.check().unwrap();
}

#[test]
fn every_invalid_example_is_refused_with_its_kind_at_its_gate() {
    let dir = examples_dir().join("invalid");
    let files = json_files(&dir);
    let mut kinds_seen = BTreeSet::new();
    for path in &files {
        let file = name(path);
        let expected = file.split('.').next().unwrap();
        assert!(JobError::KINDS.iter().any(|k| *k == expected), "{file}: `{expected}` is not a JobError kind");
        let bytes = std::fs::read(path).unwrap();
        let err = match parse_job(&bytes) {
            Ok(job) => panic!("{file}: accepted: {job:?}"),
            Err(e) => e,
        };
        assert_eq!(err.kind(), expected, "{file}: refused for the wrong reason: {err}");
        assert_eq!(err.disposition(), glowd::job::Disposition::DeadLetter);
        let message = err.to_string();
        assert!(!message.is_empty() && message.len() < 2000 && !message.chars().any(char::is_control), "{file}: {message:?}");
        // Which gate refused it: schema cases must fail the schema file alone (the contract, not Rust, says no);
        // later gates' cases must pass it (the schema cannot say no, Rust must).
        if let Ok(value) = serde_json::from_slice::<Value>(&bytes) {
            let schema_ok = validate(SchemaName::Job, &value).is_ok();
            match expected {
                "schema" => assert!(!schema_ok, "{file}: the schema accepts it; only Rust refuses"),
                "invalid" | "over_limit" | "forbidden_key" => assert!(schema_ok, "{file}: the schema already refuses it"),
                _ => {}
            }
        }
        kinds_seen.insert(expected.to_string());
    }
    assert!(files.len() >= 40, "{} invalid examples", files.len());
    for kind in JobError::KINDS.iter().filter(|k| **k != "too_large") {
        assert!(kinds_seen.contains(kind.as_str()), "no invalid example of kind {kind}");
    }
}

#[test]
fn oversized_messages_are_refused_before_parsing() {
    let (_, bytes, _) = valid_examples().into_iter().next().unwrap();
    let mut padded = bytes.clone();
    padded.resize(64 * 1024 + 1, b' '); // still valid JSON: trailing whitespace
    assert_eq!(parse_job(&padded).unwrap_err().kind(), "too_large");
    padded.truncate(64 * 1024);
    assert!(parse_job(&padded).is_ok(), "exactly at the limit is accepted");
    let small = JobParser::new(JobLimits { max_payload_bytes: 256, ..JobLimits::default() }).unwrap();
    let mut body = bytes;
    body.resize(257, b' ');
    assert_eq!(small.parse(&body).unwrap_err().kind(), "too_large");
}

// ---------------------------------------------------------------------------------------------------------------
// Result records and manifests

fn sample_timings() -> Timings {
    Timings {
        queued_seconds: Some(0.01),
        fetch_seconds: Some(0.02),
        decode_seconds: Some(0.001),
        device_seconds: Some(0.3),
        encode_seconds: Some(0.004),
        put_seconds: Some(0.05),
        total_seconds: Some(0.385),
    }
}

#[test]
fn results_of_every_kind_match_the_result_schema() {
    for (file, bytes, _) in valid_examples() {
        let job = parse_job(&bytes).unwrap();
        let outputs = output_keys("outputs", &job);
        let bpd = vec![3.2; job.inputs().len()];
        let mut done = JobResult::done(&job, outputs, bpd, sample_timings());
        done.source = Some(SourcePosition { topic: "glowd.jobs".into(), partition: 3, offset: 12345 });
        let v = serde_json::to_value(&done).unwrap();
        validate(SchemaName::Result, &v).unwrap_or_else(|e| panic!("{file}: {e}\n{v}"));
        assert_eq!(serde_json::from_value::<JobResult>(v).unwrap(), done);
    }
}

#[test]
fn refused_and_skipped_results_match_the_schema_and_the_schema_enforces_their_rules() {
    for path in json_files(&examples_dir().join("invalid")) {
        let bytes = std::fs::read(&path).unwrap();
        let err = parse_job(&bytes).unwrap_err();
        let id = glowd::job::peek_id(&bytes, 64 * 1024);
        let r = JobResult::refused(id, &err, Some(SourcePosition { topic: "glowd.jobs".into(), partition: 0, offset: 7 }));
        let v = serde_json::to_value(&r).unwrap();
        validate(SchemaName::Result, &v).unwrap_or_else(|e| panic!("{}: {e}\n{v}", name(&path)));
        assert_eq!(v["error"]["stage"], "parse");
    }
    let job = parse_job(&valid_examples()[0].1).unwrap();
    let mut skipped = JobResult::done(&job, vec![], vec![9.5], Timings::default());
    skipped.status = glowd::job::JobStatus::Skipped;
    skipped.skip_reason = Some("likelihood_gate".into());
    validate(SchemaName::Result, &serde_json::to_value(&skipped).unwrap()).unwrap();

    // The schema's own rules: a dead-lettered result names its error and has no outputs; a done one has no error.
    let mut no_error = serde_json::to_value(JobResult::refused(None, &parse_job(b"{").unwrap_err(), None)).unwrap();
    no_error.as_object_mut().unwrap().remove("error");
    assert!(validate(SchemaName::Result, &no_error).is_err());
    let mut dl_with_outputs = serde_json::to_value(JobResult::refused(None, &parse_job(b"{").unwrap_err(), None)).unwrap();
    dl_with_outputs["outputs"] = json!(["x/y.png"]);
    assert!(validate(SchemaName::Result, &dl_with_outputs).is_err());
    let mut done_with_error = serde_json::to_value(JobResult::done(&job, vec![], vec![], Timings::default())).unwrap();
    done_with_error["error"] = json!({"kind": "x", "message": "y", "stage": "put"});
    assert!(validate(SchemaName::Result, &done_with_error).is_err());
    let mut unknown_stage = no_error.clone();
    unknown_stage["error"] = json!({"kind": "x", "message": "y", "stage": "somewhere"});
    assert!(validate(SchemaName::Result, &unknown_stage).is_err());
    let long = glowd::job::JobFailure::new(glowd::job::ErrorKind::Internal, &"m".repeat(10_000), Stage::Device);
    assert_eq!(long.message.chars().count(), glowd::job::report::MAX_ERROR_MESSAGE_CHARS);
}

#[test]
fn manifests_of_every_kind_match_the_manifest_schema() {
    for (file, bytes, _) in valid_examples() {
        let job = parse_job(&bytes).unwrap();
        let keys = output_keys("outputs/v1", &job);
        let (manifest_key, written) = keys.split_last().unwrap();
        assert!(manifest_key.ends_with("/manifest.json"));
        let outputs: Vec<OutputEntry> = written
            .iter()
            .map(|k| {
                let media = match k.rsplit('.').next().unwrap() {
                    "png" => MediaType::Png,
                    "webp" => MediaType::Webp,
                    "gif" => MediaType::Gif,
                    _ => MediaType::OctetStream,
                };
                OutputEntry::of(k.clone(), media, k.as_bytes())
            })
            .collect();
        let m = Manifest {
            version: Default::default(),
            job: job.clone(),
            model: ModelProvenance {
                name: job.model.name.clone(),
                version: job.model.version.clone(),
                fingerprint: Some("cbf29ce484222325".into()),
                precision: Some(glowd::precision::Precision::Fp32),
            },
            outputs,
            bits_per_dim: vec![3.1; job.inputs().len()],
            work: Some(glowd::job::Work::of(&job, "fp32")),
        };
        let v = serde_json::to_value(&m).unwrap();
        validate(SchemaName::Manifest, &v).unwrap_or_else(|e| panic!("{file}: {e}\n{v}"));
        assert_eq!(serde_json::from_value::<Manifest>(v.clone()).unwrap(), m, "{file}");
        // Deterministic bytes: the same job gives the same manifest, so a redelivery rewrites identical bytes.
        assert_eq!(serde_json::to_vec(&m).unwrap(), serde_json::to_vec(&m.clone()).unwrap());
        // The job inside a manifest is checked against the job schema too.
        let mut bad = v.clone();
        bad["job"]["output_key"] = json!("elsewhere");
        assert!(validate(SchemaName::Manifest, &bad).is_err(), "{file}");
    }
    let entry = OutputEntry::of("k", MediaType::Png, b"abc");
    assert_eq!(entry.sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    assert_eq!(entry.bytes, 3);
}

#[test]
fn output_keys_depend_on_the_id_alone() {
    let examples = valid_examples();
    for (file, bytes, _) in &examples {
        let job = parse_job(bytes).unwrap();
        let keys = output_keys("out", &job);
        let prefix = format!("out/{}/", job.id);
        assert!(keys.iter().all(|k| k.starts_with(&prefix)), "{file}: {keys:?}");
        assert_eq!(keys.iter().collect::<BTreeSet<_>>().len(), keys.len(), "{file}: duplicate keys");
        for k in &keys {
            glowd::job::check_key(k).unwrap_or_else(|e| panic!("{file}: derived key {k:?} fails the key rules: {e}"));
        }
        let expected = match &job.spec {
            JobSpec::Edit(j) => 1 + usize::from(j.write_latents),
            JobSpec::Encode(_) => 1,
            JobSpec::Augment(j) => j.variants as usize,
            JobSpec::Interpolate(j) => j.frames as usize + usize::from(j.animation),
            JobSpec::Sample(j) => j.n as usize,
        };
        assert_eq!(keys.len(), expected + 1, "{file}: {keys:?}");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Key confinement corpus (G15)

const ALLOWED: [(&str, &str); 3] = [("images", "celeba/"), ("images", "ffhq"), ("latents", "")];

#[test]
fn the_traversal_corpus_is_rejected() {
    let corpus: &[(&str, &str, &str)] = &[
        // (bucket, key, expected reason)
        ("images", "celeba/../secrets/a.png", "dot_segment"),
        ("images", "../images/celeba/a.png", "dot_segment"),
        ("images", "celeba/./a.png", "dot_segment"),
        ("images", "celeba/..", "dot_segment"),
        ("images", "celeba/\u{ff0e}\u{ff0e}/a.png", "dot_segment"),
        ("images", "celeba/\u{2025}/a.png", "dot_segment"),
        ("images", "celeba/%2e%2e/secrets/a.png", "percent_encoded"),
        ("images", "celeba/%2E%2E/secrets/a.png", "percent_encoded"),
        ("images", "celeba/.%2e/a.png", "percent_encoded"),
        ("images", "celeba/%252e%252e/a.png", "percent_encoded"),
        ("images", "celeba%2f..%2fsecrets", "percent_encoded"),
        ("images", "celeba/%5c..%5ca.png", "percent_encoded"),
        ("images", "celeba/a.png%00.jpg", "percent_encoded"),
        ("images", "/celeba/a.png", "absolute"),
        ("images", "/etc/passwd", "absolute"),
        ("images", "celeba//a.png", "empty_segment"),
        ("images", "celeba/a//b.png", "empty_segment"),
        ("images", "celeba/", "empty_segment"),
        ("images", "celeba\\..\\secrets", "backslash"),
        ("images", "celeba/a\\b.png", "backslash"),
        ("images", "celeba/a\u{0}.png", "control_char"),
        ("images", "celeba/a\n.png", "control_char"),
        ("images", "celeba/a\u{7f}.png", "control_char"),
        ("images", "celeba/a\u{9b}.png", "control_char"),
        ("images", "celeba/cafe\u{301}.png", "not_nfc"),
        ("images", "celeba/\u{212b}ngstr\u{f6}m.png", "not_nfc"),
        ("images", "", "empty"),
        ("other", "celeba/a.png", "not_allowed"),
        ("images2", "celeba/a.png", "not_allowed"),
        ("images", "secrets/a.png", "not_allowed"),
        ("images", "celeba2/a.png", "not_allowed"),
        ("images", "celeba", "not_allowed"),
        ("images", "CELEBA/a.png", "not_allowed"),
        ("images", "ffhq-private/a.png", "not_allowed"),
        ("Images", "celeba/a.png", "bad_bucket"),
        ("127.0.0.1", "celeba/a.png", "bad_bucket"),
        ("im..ages", "celeba/a.png", "bad_bucket"),
    ];
    for (bucket, key, reason) in corpus {
        match check_key_allowed(bucket, key, &ALLOWED) {
            Ok(()) => panic!("s3://{bucket}/{key:?} was accepted"),
            Err(e) => assert_eq!(e.reason(), *reason, "s3://{bucket}/{key:?}: {e}"),
        }
    }
    assert!(check_key_allowed("images", &format!("celeba/{}", "a".repeat(1100)), &ALLOWED).is_err());
    // Nothing is allowed when nothing is configured.
    assert!(check_key_allowed::<&str, &str>("images", "celeba/a.png", &[]).is_err());
}

#[test]
fn legitimate_keys_are_accepted() {
    let legit: &[(&str, &str)] = &[
        ("images", "celeba/000001.png"),
        ("images", "celeba/img_align_celeba/000001.jpg"),
        ("images", "celeba/sub dir/with spaces (1).png"),
        ("images", "celeba/.hidden.png"),
        ("images", "celeba/a..b.png"),
        ("images", "celeba/...png"),
        ("images", "celeba/caf\u{e9}.png"),
        ("images", "celeba/\u{65e5}\u{672c}.png"),
        ("images", "celeba/100%.png"),
        ("images", "celeba/x%20y.png"),
        ("images", "celeba/a+b=c&d.png"),
        ("images", "ffhq/00000/00001.png"),
        ("latents", "anything/at/all.safetensors"),
        ("latents", "top.safetensors"),
    ];
    for (bucket, key) in legit {
        check_key_allowed(bucket, key, &ALLOWED).unwrap_or_else(|e| panic!("s3://{bucket}/{key}: {e}"));
    }
    assert!(check_key_allowed("images", &format!("celeba/{}", "a".repeat(1024 - 7)), &ALLOWED).is_ok());
}

/// Confinement through the parser: a confined parser refuses jobs reading elsewhere with `forbidden_key`.
#[test]
fn a_confined_parser_refuses_inputs_outside_its_prefixes() {
    let allowed = ALLOWED.iter().map(|(b, p)| glowd::job::AllowedPrefix::new(b, p).unwrap()).collect();
    let parser = JobParser::new(JobLimits::default()).unwrap().confine_inputs(allowed);
    for (file, bytes, _) in valid_examples() {
        parser.parse(&bytes).unwrap_or_else(|e| panic!("{file}: {e}"));
    }
    let outside = br#"{"version": 1, "id": "x", "kind": "encode", "model": {"name": "m", "version": "1"},
                       "input": "s3://images/secrets/a.png"}"#;
    let e = parser.parse(outside).unwrap_err();
    assert_eq!(e.kind(), "forbidden_key");
    assert!(e.to_string().contains("outside the allowed"), "{e}");
}
