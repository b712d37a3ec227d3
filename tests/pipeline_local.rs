//! The pipeline in embedded mode (`glowd run`) on a tiny model: every job kind end to end, outputs checked against
//! the model itself, reruns byte-identical, and each bad job one dead letter with the right reason while the good
//! ones succeed.
mod common;
use common::model::*;
use glowd::codec::image::{load_image, Fit};
use glowd::job::{self, SchemaName};
use glowd::model::batch::{pixels_to_tensor, tensor_to_pixels};
use glowd::model::directions::Directions;
use glowd::model::latents_file::read_latents;
use glowd::model::Glow;
use glowd::daemon::embedded::{run_embedded, EmbeddedOptions};
use glowd::pipeline::PipelineSettings;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn model(root: &Path) -> PathBuf {
    common::pipeline::model_with_directions(root)
}

fn png(path: &Path, w: u32, h: u32, seed: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, common::pipeline::png_bytes(w, h, seed)).unwrap();
}

/// Input objects under `<input>/images/faces/…`, good and bad.
fn inputs(input: &Path) {
    let faces = input.join("images/faces");
    png(&faces.join("a.png"), 40, 48, 1);
    png(&faces.join("b.png"), 32, 32, 2);
    png(&faces.join("c.png"), 64, 40, 3);
    std::fs::write(faces.join("empty.png"), b"").unwrap();
    let good = std::fs::read(faces.join("b.png")).unwrap();
    std::fs::write(faces.join("truncated.png"), &good[..good.len() / 2]).unwrap();
    std::fs::write(faces.join("notes.png"), b"these are not the pixels you are looking for").unwrap();
    std::fs::write(faces.join("bomb.png"), common::pipeline::png_bomb()).unwrap();
    image::GrayImage::from_pixel(32, 32, image::Luma([9])).save(faces.join("grey.png")).unwrap();
    let mut gif = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(image::RgbImage::new(32, 32)).write_to(&mut gif, image::ImageFormat::Gif).unwrap();
    std::fs::write(faces.join("anim.gif"), gif.into_inner()).unwrap();
}

fn base(id: &str, kind: &str) -> Value {
    json!({"version": 1, "id": id, "kind": kind, "model": {"name": "faces", "version": "1"}})
}

fn with(mut v: Value, extra: Value) -> Value {
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

const A: &str = "s3://images/faces/a.png";
const B: &str = "s3://images/faces/b.png";
const C: &str = "s3://images/faces/c.png";

/// (job line, expected dead-letter kind or None for a good job).
fn jobs() -> Vec<(String, Option<&'static str>)> {
    let good = vec![
        with(
            base("edit-1", "edit"),
            json!({"input": A, "edits": [{"attribute": "Smiling", "strength": 0.8}, {"attribute": "Eyeglasses", "strength": -0.5}], "write_latents": true}),
        ),
        with(
            base("edit-zero", "edit"),
            json!({"input": B, "edits": [{"attribute": "Smiling", "strength": 0}], "format": "webp"}),
        ),
        with(base("encode-1", "encode"), json!({"input": C})),
        with(base("encode-2", "encode"), json!({"input": B})),
        with(
            base("augment-1", "augment"),
            json!({"input": A, "variants": 3, "attributes": [{"attribute": "Smiling", "min": -1, "max": 1}], "keep_levels": 2}),
        ),
        with(base("interp-1", "interpolate"), json!({"inputs": [A, B], "frames": 4, "animation": true})),
        with(base("sample-1", "sample"), json!({"n": 3, "seed": 5, "temperature": 0.7})),
        with(base("sample-2", "sample"), json!({"n": 2, "temperature": [0.5, 0.6, 0.7]})),
    ];
    let mut out: Vec<(String, Option<&'static str>)> = good.into_iter().map(|v| (v.to_string(), None)).collect();
    let bad: Vec<(String, &str)> = vec![
        ("{\"version\": 1, \"id\": \"broken\"".into(), "not_json"),
        (
            with(
                base("v2", "edit"),
                json!({"version": 2, "input": A, "edits": [{"attribute": "Smiling", "strength": 1}]}),
            )
            .to_string(),
            "unknown_version",
        ),
        (base("paint-1", "paint").to_string(), "unknown_kind"),
        (with(base("schema-1", "encode"), json!({"input": A, "output_key": "s3://x/y"})).to_string(), "schema"),
        (
            with(base("over-1", "edit"), json!({"input": A, "edits": [{"attribute": "Smiling", "strength": 5}]}))
                .to_string(),
            "over_limit",
        ),
        (
            with(base("traversal-1", "encode"), json!({"input": "s3://images/faces/../secret.png"})).to_string(),
            "forbidden_key",
        ),
        (
            with(base("nomodel-1", "sample"), json!({"n": 1, "model": {"name": "cats", "version": "1"}})).to_string(),
            "unknown_model",
        ),
        (
            with(base("noattr-1", "edit"), json!({"input": A, "edits": [{"attribute": "Bald", "strength": 1}]}))
                .to_string(),
            "unknown_attribute",
        ),
        (with(base("levels-1", "sample"), json!({"n": 1, "temperature": [0.5, 0.7]})).to_string(), "invalid_for_model"),
        (
            with(base("missing-1", "encode"), json!({"input": "s3://images/faces/nope.png"})).to_string(),
            "missing_object",
        ),
        (
            with(base("missing-2", "interpolate"), json!({"inputs": [A, "s3://images/faces/nope.png"], "frames": 3}))
                .to_string(),
            "missing_object",
        ),
        (with(base("empty-1", "encode"), json!({"input": "s3://images/faces/empty.png"})).to_string(), "empty_input"),
        (
            with(base("trunc-1", "encode"), json!({"input": "s3://images/faces/truncated.png"})).to_string(),
            "corrupt_image",
        ),
        (
            with(base("text-1", "encode"), json!({"input": "s3://images/faces/notes.png"})).to_string(),
            "unsupported_format",
        ),
        (
            with(base("gif-1", "encode"), json!({"input": "s3://images/faces/anim.gif"})).to_string(),
            "unsupported_format",
        ),
        (
            with(base("bomb-1", "encode"), json!({"input": "s3://images/faces/bomb.png"})).to_string(),
            "over_pixel_limit",
        ),
        (
            with(
                base("grey-1", "edit"),
                json!({"input": "s3://images/faces/grey.png", "edits": [{"attribute": "Smiling", "strength": 1}]}),
            )
            .to_string(),
            "wrong_channels",
        ),
    ];
    out.extend(bad.into_iter().map(|(l, k)| (l, Some(k))));
    out
}

fn settings(max_batch: usize) -> PipelineSettings {
    let mut s = PipelineSettings::default();
    s.batching.max_batch = max_batch;
    s.batching.threads = 1;
    s.limits.max_in_flight_jobs = 8;
    s.images.max_pixels = 1_000_000;
    s
}

struct Run {
    out: PathBuf,
    summary: glowd::pipeline::RunSummary,
}

fn run(root: &Path, name: &str, models: &Path, input: &Path, jobs_file: &Path, max_batch: usize) -> Run {
    run_with(root.join(name), models, input, jobs_file, settings(max_batch))
}

/// An embedded run into `out` with these settings.
fn run_with(out: PathBuf, models: &Path, input: &Path, jobs_file: &Path, settings: PipelineSettings) -> Run {
    let opts = EmbeddedOptions {
        model_dir: models.to_path_buf(),
        jobs: jobs_file.to_path_buf(),
        input_dir: input.to_path_buf(),
        output_dir: out.clone(),
        results: None,
        dead_letters: None,
        settings,
    };
    let summary = run_embedded(&opts).expect("the run completes");
    Run { out, summary }
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Every file under `dir` except the per-run reports, by relative path.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .map(|e| (e.path().strip_prefix(dir).unwrap().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
        .filter(|(k, _)| !k.ends_with(".jsonl"))
        .collect()
}

fn fitted(path: &Path) -> Tensor {
    pixels_to_tensor(&[load_image(path, 3, 32, Fit { crop: None, resize: true }).unwrap()])
}

fn read_png(path: &Path) -> Tensor {
    let p = load_image(path, 3, 32, Fit::default()).unwrap_or_else(|e| panic!("{e}"));
    pixels_to_tensor(&[p])
}

#[test]
fn every_kind_end_to_end_bad_jobs_dead_lettered_and_reruns_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    let model_dir = model(&models);
    let input = tmp.path().join("input");
    inputs(&input);
    let jobs = jobs();
    let jobs_file = tmp.path().join("jobs.jsonl");
    let mut text: String = jobs.iter().map(|(l, _)| format!("{l}\n")).collect();
    text.push_str("\n   \n"); // blank lines are skipped, not jobs
    std::fs::write(&jobs_file, text).unwrap();

    let first = run(tmp.path(), "out1", &models, &input, &jobs_file, 4);
    let n_good = jobs.iter().filter(|(_, k)| k.is_none()).count() as u64;
    let n_bad = jobs.len() as u64 - n_good;
    assert_eq!(first.summary.jobs, jobs.len() as u64);
    assert_eq!(
        (first.summary.done, first.summary.dead_lettered, first.summary.abandoned),
        (n_good, n_bad, 0),
        "{:?}",
        first.summary
    );

    // One dead letter per bad job, with the expected reason, the original payload and the line it came from.
    let dead = lines(&first.out.join("dead-letters.jsonl"));
    assert_eq!(dead.len() as u64, n_bad);
    for (i, (line, kind)) in jobs.iter().enumerate() {
        let Some(kind) = kind else { continue };
        let d: Vec<&Value> = dead.iter().filter(|d| d["source"]["offset"] == json!(i)).collect();
        assert_eq!(d.len(), 1, "job line {i} ({line}): {dead:?}");
        assert_eq!(d[0]["error"]["kind"], json!(kind), "job line {i}: {}", d[0]);
        assert_eq!(d[0]["payload"], json!(line));
        assert!(!d[0]["error"]["message"].as_str().unwrap().is_empty());
    }
    // One result per job, each valid against the result schema.
    let results = lines(&first.out.join("results.jsonl"));
    assert_eq!(results.len(), jobs.len());
    for r in &results {
        job::validate(SchemaName::Result, r).unwrap_or_else(|e| panic!("{e}: {r}"));
    }
    assert_eq!(results.iter().filter(|r| r["status"] == "done").count() as u64, n_good);

    // Each good job: its files, a manifest that validates and whose checksums match.
    for (line, kind) in &jobs {
        if kind.is_some() {
            continue;
        }
        let parsed = job::parse_job(line.as_bytes()).unwrap();
        let dir = first.out.join(parsed.id.as_str());
        let manifest: Value = serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
        job::validate(SchemaName::Manifest, &manifest).unwrap_or_else(|e| panic!("{e}: {manifest}"));
        let names = parsed.output_names();
        let outputs = manifest["outputs"].as_array().unwrap();
        assert_eq!(outputs.len(), names.len());
        for (o, name) in outputs.iter().zip(&names) {
            assert_eq!(o["key"], json!(format!("{}/{name}", parsed.id)));
            let bytes = std::fs::read(dir.join(name)).unwrap();
            let entry = job::OutputEntry::of("x", job::MediaType::Png, &bytes);
            assert_eq!(o["sha256"], json!(entry.sha256), "{name}");
            assert_eq!(o["bytes"], json!(bytes.len()));
        }
    }

    // The outputs are what the model itself gives.
    let glow = Glow::load(&model_dir, Device::Cpu).unwrap();
    let faces = input.join("images/faces");
    let out = &first.out;
    // encode: the latent decodes to the fitted input exactly; bits/dim as the model's.
    let z = read_latents(&out.join("encode-1/latents.safetensors"), &glow.config).unwrap();
    assert_eq!(glow.decode(&z).unwrap(), fitted(&faces.join("c.png")));
    let bpd = glow.encode(&fitted(&faces.join("c.png"))).unwrap().bits_per_dim(&glow.config)[0];
    let r = results.iter().find(|r| r["job"] == "encode-1").unwrap();
    assert!((r["bits_per_dim"][0].as_f64().unwrap() - bpd).abs() < 1e-4, "{r}");
    // edit at strength 0 returns the (fitted) input bit for bit, also through lossless WebP.
    let webp = image::open(out.join("edit-zero/edited.webp")).unwrap();
    let webp = glowd::codec::image::image_to_pixels(webp, Path::new("w"), 3, 32, Fit::default()).unwrap();
    assert_eq!(pixels_to_tensor(&[webp]), fitted(&faces.join("b.png")));
    // edit: the model's own edit, and its latent is the shifted one.
    let dirs = Directions::load(&model_dir, &glow.config).unwrap().unwrap();
    let za = glow.encode(&fitted(&faces.join("a.png"))).unwrap().z;
    let shifted = glowd::model::directions::shift(
        &za,
        &[(dirs.get("Smiling").unwrap(), 0.8), (dirs.get("Eyeglasses").unwrap(), -0.5)],
    );
    // Not compared bit for bit: the reference encodes `a` alone and on other threads, so its latents differ from
    // the pipeline's in the last float bits, and an edited (non-round-trip) pixel may land one level apart.
    let (ours, reference) = (read_png(&out.join("edit-1/edited.png")), glow.decode(&shifted).unwrap());
    let diff = (ours.to_kind(Kind::Int16) - reference.to_kind(Kind::Int16)).abs();
    assert!(diff.max().int64_value(&[]) <= 1, "edited image differs from the model's own edit");
    assert!(diff.gt(0).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]) < 0.01);
    let zl = read_latents(&out.join("edit-1/latents.safetensors"), &glow.config).unwrap();
    for (a, b) in zl.iter().zip(&shifted) {
        assert!(max_abs_diff(a, b) < 1e-5);
    }
    // interpolate: the end frames are the fitted inputs; a GIF is written.
    assert_eq!(read_png(&out.join("interp-1/frame-000.png")), fitted(&faces.join("a.png")));
    assert_eq!(read_png(&out.join("interp-1/frame-003.png")), fitted(&faces.join("b.png")));
    assert!(image::open(out.join("interp-1/animation.gif")).is_ok());
    // sample: the same as `glowd sample --seed 5 -n 3 --temperature 0.7`.
    let samples = tensor_to_pixels(&glow.sample(3, &[0.7; 3], 5).unwrap());
    for (i, s) in samples.iter().enumerate() {
        assert_eq!(
            read_png(&out.join(format!("sample-1/sample-{i:03}.png"))),
            pixels_to_tensor(std::slice::from_ref(s))
        );
    }
    // augment: three different variants.
    let v: Vec<Tensor> = (0..3).map(|i| read_png(&out.join(format!("augment-1/variant-{i:03}.png")))).collect();
    assert_ne!(v[0], v[1]);
    assert_ne!(v[1], v[2]);

    // A rerun into a fresh folder writes identical bytes; a rerun into the same folder finds everything done and
    // changes nothing.
    // Batches of one instead of four: the outputs do not depend on what else was in a batch either.
    let t1 = tree(&first.out);
    for (name, max_batch) in [("out2", 4), ("out3", 1)] {
        let other = run(tmp.path(), name, &models, &input, &jobs_file, max_batch);
        assert_eq!(other.summary, first.summary);
        let t2 = tree(&other.out);
        assert_eq!(t1.keys().collect::<Vec<_>>(), t2.keys().collect::<Vec<_>>());
        for (k, v) in &t1 {
            assert!(v == &t2[k], "{k} differs between runs (max_batch 4 vs {max_batch})");
        }
    }
    let again = run(tmp.path(), "out1", &models, &input, &jobs_file, 4);
    assert_eq!(again.summary, first.summary);
    assert_eq!(tree(&first.out), t1);
}

/// `[batching] precision = "bf16"`: the same jobs give the same bytes across reruns and batch sizes, and every
/// manifest, result record and latents file says which precision computed it.
#[test]
fn bf16_reruns_write_identical_bytes_and_record_their_precision() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    model(&models);
    let input = tmp.path().join("input");
    inputs(&input);
    let jobs_file = tmp.path().join("jobs.jsonl");
    let good: String = jobs().iter().filter(|(_, k)| k.is_none()).map(|(l, _)| format!("{l}\n")).collect();
    std::fs::write(&jobs_file, good).unwrap();
    let bf16 = |name: &str, max_batch: usize| {
        let mut s = settings(max_batch);
        s.batching.precision = glowd::precision::Precision::Bf16;
        run_with(tmp.path().join(name), &models, &input, &jobs_file, s)
    };
    let first = bf16("a", 4);
    assert!(first.summary.done > 5 && first.summary.dead_lettered == 0, "{:?}", first.summary);
    let t1 = tree(&first.out);
    let second = bf16("b", 1);
    assert_eq!(second.summary, first.summary);
    let t2 = tree(&second.out);
    assert_eq!(t1.keys().collect::<Vec<_>>(), t2.keys().collect::<Vec<_>>());
    for (k, v) in &t1 {
        assert!(v == &t2[k], "{k} differs between bf16 runs (max_batch 4 vs 1)");
    }
    let (mut manifests, mut latents) = (0, 0);
    for (k, v) in &t1 {
        if k.ends_with("manifest.json") {
            let m: Value = serde_json::from_slice(v).unwrap();
            assert_eq!(m["model"]["precision"], "bf16", "{k}");
            manifests += 1;
        } else if k.ends_with(".safetensors") {
            let (_, meta) = safetensors::SafeTensors::read_metadata(v).unwrap();
            assert_eq!(meta.metadata().as_ref().unwrap()["precision"], "bf16", "{k}");
            // The float64 state, whole: decoding these gives the encoded picture back bit for bit.
            let st = safetensors::SafeTensors::deserialize(v).unwrap();
            assert!(st.tensors().iter().all(|(_, t)| t.dtype() == safetensors::Dtype::F64), "{k}");
            latents += 1;
        }
    }
    assert!(manifests > 5 && latents > 0, "{manifests} manifests, {latents} latents files");
    for r in lines(&first.out.join("results.jsonl")) {
        assert_eq!(r["precision"], "bf16", "{r}");
    }
    // And they are not the float32 bytes (the setting is not ignored).
    let fp32 = run(tmp.path(), "c", &models, &input, &jobs_file, 4);
    assert!(t1.iter().any(|(k, v)| k.ends_with(".safetensors") && tree(&fp32.out).get(k) != Some(v)));
}

#[test]
fn the_command_line_runs_jobs_and_exits_1_when_some_were_dead_lettered() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    model(&models);
    let input = tmp.path().join("input");
    inputs(&input);
    let jobs_file = tmp.path().join("jobs.jsonl");
    let lines = [
        with(base("cli-edit", "edit"), json!({"input": A, "edits": [{"attribute": "Smiling", "strength": 1}]}))
            .to_string(),
        "not json".to_string(),
    ];
    std::fs::write(&jobs_file, lines.join("\n")).unwrap();
    let out = tmp.path().join("out");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let run = common::bin::glowd()
        .args(["run", "--model-dir", &s(&models.join("faces")), "--jobs", &s(&jobs_file), "--input-dir", &s(&input)])
        .args(["--output-dir", &s(&out), "--crop", "0,0,32,40", "--max-batch", "2", "--threads", "1"])
        .args(["--log-format", "json", "--precision", "bf16"])
        .env("GLOWD_LOG", "info")
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1), "{}", String::from_utf8_lossy(&run.stderr));
    // JSON logs: every line an object; the job's lines carry its id (from the job span) for log collectors.
    let logs: Vec<Value> = String::from_utf8_lossy(&run.stderr)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let stderr = String::from_utf8_lossy(&run.stderr);
    // Log events are never text lines (the run's human summary and exit reason still are).
    assert!(!stderr.contains(" INFO ") && !stderr.contains(" WARN ") && logs.len() >= 3, "{stderr}");
    assert!(
        logs.iter().any(|v| v["span"]["id"] == "cli-edit" && v["message"] == "done" && v["level"] == "INFO"),
        "{logs:#?}"
    );
    let summary: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(summary, json!({"jobs": 2, "done": 1, "dead_lettered": 1, "abandoned": 0}));
    assert!(out.join("cli-edit/edited.png").is_file() && out.join("cli-edit/manifest.json").is_file());
    // `--precision` on the command line is the pipeline's [batching] precision.
    let manifest: Value = serde_json::from_slice(&std::fs::read(out.join("cli-edit/manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["model"]["precision"], "bf16", "{manifest}");
    let dead = std::fs::read_to_string(out.join("dead-letters.jsonl")).unwrap();
    assert!(dead.contains("not_json") && dead.contains("\"offset\":1"), "{dead}");
}

/// Two models behind one device worker, and jobs for only one of them (then for both): each model's batcher must
/// not hold the worker's slot while its own queue is empty, or the other model's jobs wait forever.
#[test]
fn jobs_for_one_of_two_models_all_finish() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    let faces = model(&models);
    let other = models.join("other");
    std::fs::create_dir_all(&other).unwrap();
    for f in std::fs::read_dir(&faces).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, other.join(f.file_name().unwrap())).unwrap();
    }
    let input = tmp.path().join("input");
    inputs(&input);
    let mut lines = vec![
        with(base("one-edit", "edit"), json!({"input": A, "edits": [{"attribute": "Smiling", "strength": 0.5}]})),
        with(base("one-encode", "encode"), json!({"input": B})),
        with(base("one-sample", "sample"), json!({"n": 2})),
        with(base("one-edit-c", "edit"), json!({"input": C, "edits": [{"attribute": "Eyeglasses", "strength": 1}]})),
    ];
    let jobs_file = tmp.path().join("one.jsonl");
    let text = |l: &[Value]| l.iter().map(Value::to_string).collect::<Vec<_>>().join("\n");
    std::fs::write(&jobs_file, text(&lines)).unwrap();
    let r = run(tmp.path(), "one", &models, &input, &jobs_file, 4);
    assert_eq!((r.summary.done, r.summary.abandoned), (4, 0), "{:?}", r.summary);
    lines.push(json!({"version": 1, "id": "other-sample", "kind": "sample", "model": {"name": "other", "version": "1"}, "n": 1}));
    std::fs::write(&jobs_file, text(&lines)).unwrap();
    let r = run(tmp.path(), "both", &models, &input, &jobs_file, 4);
    assert_eq!((r.summary.done, r.summary.abandoned), (5, 0), "{:?}", r.summary);
}

/// The likelihood gate: bits/dim above `gate.max_bits_per_dim` skips the job (nothing written, status `skipped`,
/// reason `likelihood_gate`) or flags it (outputs written, `flags: ["over_likelihood_gate"]`); below it, nothing.
#[test]
fn the_likelihood_gate_skips_or_flags_outliers() {
    use glowd::settings::GateAction;
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    model(&models);
    let input = tmp.path().join("input");
    inputs(&input);
    let jobs_file = tmp.path().join("jobs.jsonl");
    let jobs = [with(base("gated", "encode"), json!({"input": B})), with(base("free", "sample"), json!({"n": 1}))];
    std::fs::write(&jobs_file, jobs.iter().map(Value::to_string).collect::<Vec<_>>().join("\n")).unwrap();
    let go = |name: &str, max: f64, action: GateAction| {
        let mut s = settings(2);
        s.gate.max_bits_per_dim = Some(max);
        s.gate.action = action;
        let Run { out, summary } = run_with(tmp.path().join(name), &models, &input, &jobs_file, s);
        assert_eq!((summary.done, summary.dead_lettered), (2, 0));
        let results: BTreeMap<String, Value> =
            lines(&out.join("results.jsonl")).into_iter().map(|r| (r["job"].as_str().unwrap().to_string(), r)).collect();
        for r in results.values() {
            glowd::job::validate(glowd::job::SchemaName::Result, r).unwrap_or_else(|e| panic!("{e}: {r}"));
        }
        (out, results)
    };
    let (out, r) = go("skip", 0.5, GateAction::Skip);
    assert_eq!(r["gated"]["status"], "skipped");
    assert_eq!(r["gated"]["skip_reason"], "likelihood_gate");
    assert!(r["gated"]["bits_per_dim"][0].as_f64().unwrap() > 0.5);
    assert!(!out.join("gated").exists(), "a skipped job wrote outputs");
    assert_eq!(r["free"]["status"], "done", "sample jobs have no input to gate");
    let (out, r) = go("flag", 0.5, GateAction::Flag);
    assert_eq!((r["gated"]["status"].as_str(), r["gated"]["flags"].clone()), (Some("done"), json!(["over_likelihood_gate"])));
    assert!(out.join("gated/latents.safetensors").is_file());
    let (_, r) = go("open", 1e6, GateAction::Skip);
    assert_eq!(r["gated"]["status"], "done");
    assert!(r["gated"].get("flags").is_none());
}

/// An edit strong enough to push the latent off the model's range decodes to non-finite values: that job is
/// dead-lettered (`non_finite_output`) instead of writing a black image, and a sane edit in the same batch is not
/// affected. Uses the committed face model on a CelebA face from ../shared/data.
#[test]
fn an_edit_that_overflows_is_dead_lettered_not_written_black() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let data = std::env::var("GLOWD_SHARED_DATA").map(PathBuf::from).unwrap_or(root.join("../shared/data"));
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input");
    std::fs::create_dir_all(input.join("faces")).unwrap();
    std::fs::copy(data.join("celeba/img/000001.jpg"), input.join("faces/a.jpg")).expect("../shared/data/celeba");
    let job = |id: &str, attr: &str, strength: f64| {
        json!({"version": 1, "id": id, "kind": "edit", "model": {"name": "celeba-32", "version": "1"},
               "input": "s3://faces/a.jpg", "edits": [{"attribute": attr, "strength": strength}]})
        .to_string()
    };
    let jobs_file = tmp.path().join("jobs.jsonl");
    std::fs::write(&jobs_file, [job("too-far", "Wearing_Hat", 4.0), job("fine", "Smiling", 0.5)].join("\n")).unwrap();
    let mut s = settings(4);
    s.images.crop = Some([10, 25, 80, 95]);
    let Run { out, summary } = run_with(tmp.path().join("out"), &root.join("models/celeba-32"), &input, &jobs_file, s);
    assert_eq!((summary.done, summary.dead_lettered), (1, 1), "{summary:?}");
    let dead = lines(&out.join("dead-letters.jsonl"));
    assert_eq!(dead[0]["job"], "too-far");
    assert_eq!(dead[0]["error"]["kind"], "non_finite_output", "{}", dead[0]);
    assert!(!out.join("too-far").exists());
    let fine = image::open(out.join("fine/edited.png")).unwrap().to_rgb8();
    let mean = fine.as_raw().iter().map(|&v| v as f64).sum::<f64>() / fine.as_raw().len() as f64;
    assert!(mean > 20.0, "the sane edit came out dark (mean {mean})");
}

/// The job lines of `jobs` in a file `name` under `dir`.
fn jobs_file(dir: &Path, name: &str, jobs: &[Value]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, jobs.iter().map(Value::to_string).collect::<Vec<_>>().join("\n")).unwrap();
    path
}

fn smiling(id: &str, strength: f64) -> Value {
    with(base(id, "edit"), json!({"input": A, "edits": [{"attribute": "Smiling", "strength": strength}]}))
}

/// Issue 16, item 5, as reproduced: in `glowd run`, an edit job `same-id` at Smiling −1.0 after one at +1.0 was
/// reported `done` with the +1.0 picture (output keys depend on the id alone, an existing output was read back and
/// used, an existing manifest accepted unchecked). The second job is other work under a used id: it is refused
/// (`id_conflict`, both fingerprints named) and the folder keeps the first job's outputs. Both in one run (they race
/// for the folder): exactly one is done, with its own picture, and the other refused.
#[test]
fn a_reused_id_is_refused_not_answered_with_another_jobs_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    model(&models);
    let input = tmp.path().join("input");
    inputs(&input);
    let (plus, minus) = (smiling("same-id", 1.0), smiling("same-id", -1.0));
    let fingerprint = |v: &Value| glowd::job::work_fingerprint(&job::parse_job(v.to_string().as_bytes()).unwrap(), "fp32");
    // What each job's picture is on its own.
    let alone = |name: &str, j: &Value| {
        let r = run(tmp.path(), name, &models, &input, &jobs_file(tmp.path(), &format!("{name}.jsonl"), &[j.clone()]), 4);
        assert_eq!(r.summary.done, 1, "{:?}", r.summary);
        std::fs::read(r.out.join("same-id/edited.png")).unwrap()
    };
    let (plus_png, minus_png) = (alone("plus-alone", &plus), alone("minus-alone", &minus));
    assert_ne!(plus_png, minus_png, "the two edits give different pictures");

    // One after the other, into the same folder.
    let first = run(tmp.path(), "out", &models, &input, &jobs_file(tmp.path(), "plus.jsonl", &[plus.clone()]), 4);
    assert_eq!((first.summary.done, first.summary.dead_lettered), (1, 0));
    let before = tree(&first.out);
    let second = run(tmp.path(), "out", &models, &input, &jobs_file(tmp.path(), "minus.jsonl", &[minus.clone()]), 4);
    assert_eq!((second.summary.done, second.summary.dead_lettered), (0, 1), "{:?}", second.summary);
    let dead = lines(&second.out.join("dead-letters.jsonl"));
    assert_eq!(dead[0]["error"]["kind"], "id_conflict", "{}", dead[0]);
    let message = dead[0]["error"]["message"].as_str().unwrap();
    assert!(message.contains(&fingerprint(&plus)) && message.contains(&fingerprint(&minus)), "{message}");
    let results = lines(&second.out.join("results.jsonl"));
    assert_eq!(results[0]["status"], "dead_lettered", "{}", results[0]);
    assert_eq!(tree(&second.out), before, "the refused job changed the folder");
    assert_eq!(std::fs::read(second.out.join("same-id/edited.png")).unwrap(), plus_png);
    let manifest: Value = serde_json::from_slice(&std::fs::read(second.out.join("same-id/manifest.json")).unwrap()).unwrap();
    job::validate(SchemaName::Manifest, &manifest).unwrap();
    assert_eq!(manifest["work"], json!({"fingerprint": fingerprint(&plus), "precision": "fp32"}));
    // The first job again is a redelivery of the same work: done, from its manifest, nothing changed.
    let again = run(tmp.path(), "out", &models, &input, &jobs_file(tmp.path(), "plus.jsonl", &[plus.clone()]), 4);
    assert_eq!((again.summary.done, again.summary.dead_lettered), (1, 0));
    assert_eq!(tree(&again.out), before);
    // The same message on a pipeline that runs bf16 is other work (other bytes): refused, the fp32 outputs kept.
    let mut bf16 = settings(4);
    bf16.batching.precision = glowd::precision::Precision::Bf16;
    let other = run_with(first.out.clone(), &models, &input, &jobs_file(tmp.path(), "plus.jsonl", &[plus.clone()]), bf16);
    assert_eq!((other.summary.done, other.summary.dead_lettered), (0, 1), "{:?}", other.summary);
    let dead = lines(&other.out.join("dead-letters.jsonl"));
    assert_eq!(dead[0]["error"]["kind"], "id_conflict", "{}", dead[0]);
    let bf16_fingerprint = glowd::job::work_fingerprint(&job::parse_job(plus.to_string().as_bytes()).unwrap(), "bf16");
    assert!(dead[0]["error"]["message"].as_str().unwrap().contains(&bf16_fingerprint), "{}", dead[0]);
    assert_eq!(tree(&other.out), before);

    // Both in one run: they race for the folder; the claim written before any output gives it to one of them.
    let both = run(tmp.path(), "both", &models, &input, &jobs_file(tmp.path(), "both.jsonl", &[plus.clone(), minus.clone()]), 4);
    assert_eq!((both.summary.done, both.summary.dead_lettered), (1, 1), "{:?}", both.summary);
    let done = lines(&both.out.join("results.jsonl")).into_iter().find(|r| r["status"] == "done").unwrap();
    let winner = if done["source"]["offset"] == 0 { (&plus, &plus_png) } else { (&minus, &minus_png) };
    let manifest: Value = serde_json::from_slice(&std::fs::read(both.out.join("same-id/manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["work"]["fingerprint"], json!(fingerprint(winner.0)));
    assert_eq!(&std::fs::read(both.out.join("same-id/edited.png")).unwrap(), winner.1, "the done job's picture is not its own");
    assert_eq!(lines(&both.out.join("dead-letters.jsonl"))[0]["error"]["kind"], "id_conflict");
}

/// Issue 16, item 6: a finished job redelivered (a crash after its result, before the commit) is found finished
/// from its manifest before anything else, and reported done, although meanwhile its input was deleted, the pipeline's
/// limits were lowered and its model is no longer served. Before, each of those made it a dead letter.
#[test]
fn a_finished_job_redelivered_is_done_though_its_input_limits_and_model_changed() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    model(&models);
    let input = tmp.path().join("input");
    inputs(&input);
    let faces = input.join("images/faces");
    std::fs::copy(faces.join("a.png"), faces.join("doomed.png")).unwrap();
    let jobs = [
        with(base("finished-edit", "edit"), json!({"input": "s3://images/faces/doomed.png", "edits": [{"attribute": "Smiling", "strength": 0.8}]})),
        with(base("finished-sample", "sample"), json!({"n": 3})),
    ];
    let file = jobs_file(tmp.path(), "jobs.jsonl", &jobs);
    let first = run(tmp.path(), "out", &models, &input, &file, 4);
    assert_eq!((first.summary.done, first.summary.dead_lettered), (2, 0), "{:?}", first.summary);
    let before = tree(&first.out);
    let results_before = lines(&first.out.join("results.jsonl"));

    // Then: the input is deleted, the limits are lowered below both jobs, and only another model is served.
    std::fs::remove_file(faces.join("doomed.png")).unwrap();
    let mut s = settings(4);
    s.jobs.max_strength = 0.5;
    s.jobs.max_samples = 1;
    let others = tmp.path().join("other-models");
    std::fs::create_dir_all(&others).unwrap();
    std::fs::rename(models.join("faces"), others.join("other")).unwrap();
    let again = run_with(first.out.clone(), &others, &input, &file, s);
    assert_eq!((again.summary.done, again.summary.dead_lettered), (2, 0), "{:?}\n{}", again.summary,
        std::fs::read_to_string(again.out.join("dead-letters.jsonl")).unwrap());
    assert!(std::fs::read_to_string(again.out.join("dead-letters.jsonl")).unwrap().is_empty());
    let results = lines(&again.out.join("results.jsonl"));
    for r in &results {
        job::validate(SchemaName::Result, r).unwrap_or_else(|e| panic!("{e}: {r}"));
        let earlier = results_before.iter().find(|b| b["job"] == r["job"]).unwrap();
        assert_eq!((&r["status"], &r["outputs"], &r["bits_per_dim"]), (&earlier["status"], &earlier["outputs"], &earlier["bits_per_dim"]), "{r}");
    }
    assert_eq!(tree(&again.out), before);
}

/// Issue 16, item 9: an object already at an output key is read back only up to what this work writes there (and
/// `output.max_readback_bytes` bounds a manifest or claim read): a large object that is not the job's output is
/// refused (`id_conflict`), never read whole nor listed in a manifest. Before, it was read back with no bound and
/// the job reported done with it.
#[test]
fn an_existing_object_is_read_back_only_up_to_what_the_work_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    model(&models);
    let input = tmp.path().join("input");
    inputs(&input);
    let out = tmp.path().join("out");
    std::fs::create_dir_all(out.join("squatted")).unwrap();
    std::fs::write(out.join("squatted/edited.png"), vec![7u8; 1 << 20]).unwrap();
    std::fs::create_dir_all(out.join("big-manifest")).unwrap();
    std::fs::write(out.join("big-manifest/manifest.json"), vec![b' '; 4096]).unwrap();
    let file = jobs_file(tmp.path(), "jobs.jsonl", &[smiling("squatted", 0.5), smiling("big-manifest", 0.5), smiling("fine", 0.5)]);
    let mut s = settings(4);
    s.output.max_readback_bytes = 2048;
    let r = run_with(out.clone(), &models, &input, &file, s);
    assert_eq!((r.summary.done, r.summary.dead_lettered), (1, 2), "{:?}", r.summary);
    let dead = lines(&out.join("dead-letters.jsonl"));
    for d in &dead {
        assert_eq!(d["error"]["kind"], "id_conflict", "{d}");
    }
    let squatted = dead.iter().find(|d| d["job"] == "squatted").unwrap();
    assert!(squatted["error"]["message"].as_str().unwrap().contains("1048576 bytes"), "{squatted}");
    let big = dead.iter().find(|d| d["job"] == "big-manifest").unwrap();
    assert!(big["error"]["message"].as_str().unwrap().contains("max_readback_bytes"), "{big}");
    assert!(!out.join("squatted/manifest.json").exists(), "a manifest lists an object that is not the job's output");
    assert!(out.join("fine/manifest.json").is_file());
}

/// Issue 16, item 9: a sample or augment op larger than `max_batch` runs in passes of at most `max_batch` (the size
/// the warm-up ran), with the same bytes as one pass over all of it: the pipeline's outputs at `max_batch` 2 and 16
/// are identical, and the samples are the model's own `sample(n)` in one pass.
#[test]
fn ops_larger_than_max_batch_run_in_passes_with_the_bytes_of_one_pass() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    let model_dir = model(&models);
    let input = tmp.path().join("input");
    inputs(&input);
    let jobs = [
        with(base("big-sample", "sample"), json!({"n": 7, "seed": 11, "temperature": 0.7})),
        with(base("big-augment", "augment"), json!({"input": A, "variants": 7, "attributes": [{"attribute": "Smiling", "min": -1, "max": 1}], "keep_levels": 2})),
        with(base("big-interp", "interpolate"), json!({"inputs": [A, B], "frames": 7})),
    ];
    let file = jobs_file(tmp.path(), "jobs.jsonl", &jobs);
    let split = run(tmp.path(), "split", &models, &input, &file, 2);
    let whole = run(tmp.path(), "whole", &models, &input, &file, 16);
    assert_eq!((split.summary.done, whole.summary.done), (3, 3), "{:?} {:?}", split.summary, whole.summary);
    let (a, b) = (tree(&split.out), tree(&whole.out));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, v) in &a {
        assert!(v == &b[k], "{k}: passes of 2 and one pass differ");
    }
    let glow = Glow::load(&model_dir, Device::Cpu).unwrap();
    let samples = tensor_to_pixels(&glow.sample(7, &[0.7; 3], 11).unwrap());
    for (i, s) in samples.iter().enumerate() {
        assert_eq!(read_png(&split.out.join(format!("big-sample/sample-{i:03}.png"))), pixels_to_tensor(std::slice::from_ref(s)), "sample {i}");
    }
}
