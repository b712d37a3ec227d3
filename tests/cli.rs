//! The command line end to end on a tiny model: file naming, exact round trips, and one clear line per bad input.
mod common;
use std::path::{Path, PathBuf};
use std::process::Output;

fn glowd(args: &[&str]) -> Output {
    common::bin::glowd().args(args).env("GLOWD_LOG", "warn").output().expect("runs")
}

fn write_images(dir: &Path, n: usize, size: u32) -> Vec<PathBuf> {
    (0..n)
        .map(|i| {
            let img = image::RgbImage::from_fn(size, size, |x, y| {
                image::Rgb([(x * 7 + i as u32 * 31) as u8, (y * 5) as u8, ((x * y) % 256) as u8])
            });
            let path = dir.join(format!("img{i}.png"));
            img.save(&path).unwrap();
            path
        })
        .collect()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn init_encode_decode_sample_eval_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let images = write_images(&data, 4, 32);
    let model = tmp.path().join("model");
    let out = glowd(&["model", "init", "--preset", "tiny", "--set", "steps=2", "--data", s(&data), "--out", s(&model)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let lat = tmp.path().join("lat");
    let mut args = vec!["encode", "--model", s(&model), "--out", s(&lat)];
    args.extend(images.iter().map(|p| s(p)));
    let out = glowd(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 4);
    for line in &lines {
        let bpd = line["bits_per_dim"].as_f64().unwrap();
        assert!(bpd > 0.0 && bpd < 16.0, "{line}");
    }

    // Encoding is reproducible to the byte (latent files included).
    let lat_again = tmp.path().join("lat_again");
    let mut args = vec!["encode", "--model", s(&model), "--out", s(&lat_again)];
    args.extend(images.iter().map(|p| s(p)));
    let out = glowd(&args);
    assert!(out.status.success());
    assert_eq!(
        std::fs::read(lat.join("img0.safetensors")).unwrap(),
        std::fs::read(lat_again.join("img0.safetensors")).unwrap()
    );

    let dec = tmp.path().join("dec");
    let lat_files: Vec<PathBuf> = (0..4).map(|i| lat.join(format!("img{i}.safetensors"))).collect();
    let mut args = vec!["decode", "--model", s(&model), "--out", s(&dec)];
    args.extend(lat_files.iter().map(|p| s(p)));
    let out = glowd(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for (i, original) in images.iter().enumerate() {
        let a = image::open(original).unwrap().to_rgb8();
        let b = image::open(dec.join(format!("img{i}.png"))).unwrap().to_rgb8();
        assert_eq!(a, b, "img{i} did not round-trip");
    }

    let grid = tmp.path().join("grid.png");
    let out = glowd(&["sample", "--model", s(&model), "-n", "6", "--cols", "3", "--seed", "2", "--out", s(&grid)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let g = image::open(&grid).unwrap();
    assert_eq!((g.width(), g.height()), (3 * 34 + 2, 2 * 34 + 2));

    let out = glowd(&["eval", "--model", s(&model), s(&data)]);
    assert!(out.status.success());
    let last = String::from_utf8(out.stdout).unwrap().lines().last().unwrap().to_string();
    let summary: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(summary["images"], 4);
}

#[test]
fn bad_inputs_fail_alone_with_one_line_each() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let good = write_images(&data, 2, 32);
    let model = tmp.path().join("model");
    let out = glowd(&["model", "init", "--set", "steps=1", "--data", s(&data), "--out", s(&model)]);
    assert!(out.status.success());

    let wrong_size = write_images(&tmp.path().join("."), 1, 20).remove(0);
    let garbage = tmp.path().join("garbage.png");
    std::fs::write(&garbage, b"\x89PNG\r\n\x1a\n truncated").unwrap();
    let grey = tmp.path().join("grey.png");
    image::GrayImage::new(32, 32).save(&grey).unwrap();
    let lat = tmp.path().join("lat");
    let out = glowd(&[
        "encode", "--model", s(&model), "--out", s(&lat), s(&good[0]), s(&wrong_size), s(&garbage), s(&grey), s(&good[1]),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let complaints: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("glowd:")).collect();
    assert_eq!(complaints.len(), 3, "{stderr}");
    assert!(complaints.iter().any(|l| l.contains("img0.png") && l.contains("20x20") && l.contains("32x32")), "{stderr}");
    assert!(complaints.iter().any(|l| l.contains("garbage.png")), "{stderr}");
    assert!(complaints.iter().any(|l| l.contains("grey.png") && l.contains("channels")), "{stderr}");
    assert!(lat.join("img0.safetensors").exists() && lat.join("img1.safetensors").exists());

    // A latent file of the wrong shape, and one that is not a latent file at all.
    let other = tmp.path().join("other");
    let out = glowd(&["model", "init", "--set", "steps=1", "--set", "levels=2", "--data", s(&data), "--out", s(&other)]);
    assert!(out.status.success());
    let lat2 = tmp.path().join("lat2");
    assert!(glowd(&["encode", "--model", s(&other), "--out", s(&lat2), s(&good[0])]).status.success());
    let dec = tmp.path().join("dec");
    let out = glowd(&[
        "decode",
        "--model",
        s(&model),
        "--out",
        s(&dec),
        s(&lat2.join("img0.safetensors")),
        s(&garbage),
        s(&lat.join("img1.safetensors")),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("lat2/img0.safetensors"), "{stderr}");
    assert!(stderr.contains("garbage.png"), "{stderr}");
    assert!(dec.join("img1.png").exists());
    assert!(!dec.join("img0.png").exists());
}

#[test]
fn unknown_device_and_missing_model_are_clear_errors() {
    let out = glowd(&["sample", "--model", "/nonexistent", "--out", "/tmp/x.png", "--device", "tpu"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown device `tpu`"));
    let out = glowd(&["sample", "--model", "/nonexistent", "--out", "/tmp/x.png"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/config.json"));
}

fn train_args<'a>(data: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "train", "--data", data, "--preset", "tiny", "--set", "levels=2", "--set", "steps=1", "--set", "hidden=8",
        "--batch", "4", "--init-batch", "8", "--warmup", "1", "--val-fraction", "0.25", "--eval-every", "1",
        "--sample-every", "1000", "--checkpoint-every", "1000", "--threads", "1", "--quiet", "--out", out,
    ]
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn train_takes_the_last_value_of_a_flag_given_twice_and_keeps_every_set() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    write_images(&data, 8, 32);
    let out = tmp.path().join("out");
    // What scripts/face-model and scripts/train-mnist do: their defaults, then the user's "$@".
    let mut args = train_args(s(&data), s(&out));
    args.extend(["--steps", "500", "--lr", "1e-2", "--steps", "2", "--lr", "1e-3"]);
    let o = glowd(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary = json(&out.join("model/training.json"));
    assert_eq!(summary["steps"], 2);
    assert_eq!(summary["options"]["lr"], 1e-3);
    let config = json(&out.join("model/config.json"));
    let get = |k: &str| config[k].as_i64();
    assert_eq!((get("levels"), get("steps"), get("hidden")), (Some(2), Some(1), Some(8)));
}

#[test]
fn train_skips_wrong_sized_images_unless_resize_is_given() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    write_images(&data, 8, 32);
    let odd = data.join("odd");
    std::fs::create_dir_all(&odd).unwrap();
    write_images(&odd, 3, 40);
    let count = |summary: &serde_json::Value| {
        summary["train_images"].as_u64().unwrap() + summary["validation_images"].as_u64().unwrap()
    };

    let plain = tmp.path().join("plain");
    let mut args = train_args(s(&data), s(&plain));
    args.extend(["--steps", "1"]);
    let o = glowd(&args);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("skipped 3 unusable input(s)"), "{stderr}");
    assert!(stderr.contains("odd/img0.png") && stderr.contains("40x40"), "{stderr}");
    assert_eq!(count(&json(&plain.join("model/training.json"))), 8);

    let resized = tmp.path().join("resized");
    let mut args = train_args(s(&data), s(&resized));
    args.extend(["--steps", "1", "--resize"]);
    let o = glowd(&args);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(!stderr.contains("skipped"), "{stderr}");
    assert_eq!(count(&json(&resized.join("model/training.json"))), 11);
}

#[test]
fn eval_split_scores_exactly_the_images_training_held_out() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    write_images(&data, 24, 32);
    let out = tmp.path().join("out");
    let mut args = train_args(s(&data), s(&out));
    args.extend(["--steps", "2"]);
    let o = glowd(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary = json(&out.join("model/training.json"));
    assert_eq!(summary["validation_fraction"], 0.25);
    let model = out.join("model");
    let eval = |split: &str| -> serde_json::Value {
        let o =
            glowd(&["eval", "--model", s(&model), s(&data), "--split", split, "--val-fraction", "0.25", "--summary"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_str(String::from_utf8(o.stdout).unwrap().trim()).unwrap()
    };
    let (val, train, all) = (eval("validation"), eval("train"), eval("all"));
    assert_eq!(val["images"], summary["validation_images"]);
    assert_eq!(train["images"], summary["train_images"]);
    assert_eq!(all["images"], 24);
    assert!(val["images"].as_u64().unwrap() > 0 && train["images"].as_u64().unwrap() > 0);
    let scored = val["mean_bits_per_dim"].as_f64().unwrap();
    let reported = summary["final_validation_bits_per_dim"].as_f64().unwrap();
    assert!((scored - reported).abs() < 1e-6, "eval --split validation {scored} vs training's {reported}");
}

fn face_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/celeba-32")
}

#[test]
fn edit_keeps_each_input_file_name_and_format() {
    let tmp = tempfile::tempdir().unwrap();
    // Soft grey gradients: near enough to the face model's data that they decode finite (the hard patterns of
    // write_images do not).
    let png: Vec<PathBuf> = (0..2u32)
        .map(|i| {
            let img = image::RgbImage::from_fn(32, 32, |x, y| image::Rgb([(100 + x + i * 9) as u8, (110 + y) as u8, 120]));
            let path = tmp.path().join(format!("img{i}.png"));
            img.save(&path).unwrap();
            path
        })
        .collect();
    let jpg = tmp.path().join("face.jpg");
    image::open(&png[0]).unwrap().to_rgb8().save(&jpg).unwrap();
    // PNG bytes under a name whose format glowd cannot write: read by content, written as .png with a note.
    let odd = tmp.path().join("other.img");
    std::fs::copy(&png[1], &odd).unwrap();
    let out = tmp.path().join("out");
    let model = face_model();
    let args = ["edit", "--model", s(&model), "--attr", "Smiling=0.5", s(&jpg), s(&png[1]), s(&odd), "--out", s(&out)];
    let o = glowd(&args);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let mut names: Vec<String> =
        std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["face.jpg", "img1.png", "other.png"]);
    assert_eq!(image::ImageFormat::from_path(out.join("face.jpg")).unwrap(), image::ImageFormat::Jpeg);
    let bytes = std::fs::read(out.join("face.jpg")).unwrap();
    assert_eq!(&bytes[..3], &[0xFF, 0xD8, 0xFF], "face.jpg must be a JPEG");
    assert_eq!(image::open(out.join("face.jpg")).unwrap().width(), 32);
    assert!(stderr.contains("other.img") && stderr.contains("other.png"), "{stderr}");
}

#[test]
fn edit_and_sheet_refuse_an_unknown_attribute_or_a_strength_out_of_bound_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let model = face_model();
    // The image does not exist: an error about it would mean work started before the check.
    let missing = tmp.path().join("missing.png");
    let out = tmp.path().join("out");
    let sheet = tmp.path().join("sheet.png");
    let (m, img, o, sh) = (s(&model), s(&missing), s(&out), s(&sheet));
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["edit", "--model", m, "--attr", "Smiling=1", "--attr", "Smile=1", img, "--out", o],
            "unknown attribute `Smile`",
        ),
        (vec!["edit", "--model", m, "--attr", "Smiling=5", img, "--out", o], "`Smiling=5`: strength 5 is outside ±4"),
        (vec!["edit", "--model", m, "--attr", "Smiling=2.5", "--max-strength", "2", img, "--out", o], "outside ±2"),
        (vec!["sheet", "--model", m, "--attr", "Smile", img, "--out", sh], "unknown attribute `Smile`"),
        (vec!["sheet", "--model", m, "--attr", "Smiling", "--strengths=-6,0,1", img, "--out", sh], "-6 is outside ±4"),
    ];
    for (args, expected) in cases {
        let o = glowd(&args);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: expected `{expected}` in {stderr}");
        assert!(!stderr.contains("missing.png"), "{args:?} read its images before refusing: {stderr}");
        assert!(!out.exists() && !sheet.exists(), "{args:?} wrote outputs");
    }
}

#[test]
fn directions_refuse_attributes_with_too_few_positives_or_negatives_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    write_images(&data, 8, 32);
    let model = tmp.path().join("model");
    let o = glowd(&["model", "init", "--set", "steps=1", "--data", s(&data), "--out", s(&model)]);
    assert!(o.status.success());
    // Smiling: 4 and 4; Eyeglasses: 1 positive; Hat: 1 negative.
    let mut csv = String::from("file,Smiling,Eyeglasses,Hat\n");
    for i in 0..8 {
        csv += &format!("img{i}.png,{},{},{}\n", i % 2, (i == 0) as u8, (i != 3) as u8);
    }
    let labels = tmp.path().join("labels.csv");
    std::fs::write(&labels, csv).unwrap();
    let (m, d, l) = (s(&model), s(&data), s(&labels));
    let args = ["directions", "--model", m, "--images", d, "--labels", l, "--min-examples", "3"];
    let o = glowd(&args);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("Eyeglasses (1 positive, 7 negative; need 3 of each)"), "{stderr}");
    assert!(stderr.contains("Hat (7 positive, 1 negative; need 3 of each)"), "{stderr}");
    assert!(!stderr.contains("Smiling"), "Smiling has enough examples: {stderr}");
    assert!(!model.join("directions.safetensors").exists() && !model.join("directions.json").exists());
    // The learnable attribute alone goes through.
    let o = glowd(&[
        "directions", "--model", s(&model), "--images", s(&data), "--labels", s(&labels), "--attributes", "Smiling",
        "--min-examples", "3",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(model.join("directions.safetensors").exists());
}

/// `edit` and `sheet` never write a black picture for an edit that decodes non-finite: an error line names the file
/// and the attribute/strength, the other outputs are still written, exit status 1. Committed face model, a CelebA
/// face from ../shared/data (Wearing_Hat +4 overflows on it; +0 never does).
#[test]
fn edits_that_decode_non_finite_are_error_lines_not_black_pictures() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let data = std::env::var("GLOWD_SHARED_DATA").map(PathBuf::from).unwrap_or(root.join("../shared/data"));
    let face = data.join("celeba/img/000001.jpg");
    if !face.exists() {
        assert!(std::env::var("CI").is_err(), "CI needs ../shared/data/celeba");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let model = root.join("models/celeba-32");
    let out = tmp.path().join("edited");
    let run = glowd(&["edit", "--model", s(&model), "--attr", "Wearing_Hat=4", "--crop", "10,25,80,95", s(&face), "--out", s(&out)]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("000001.jpg") && stderr.contains("Wearing_Hat=4") && stderr.contains("non-finite"), "{stderr}");
    assert!(!out.join("000001.jpg").exists() && !out.join("000001.png").exists(), "a non-finite edit was written");

    let sheet = tmp.path().join("sheet.png");
    let run = glowd(&[
        "sheet", "--model", s(&model), "--attr", "Wearing_Hat", "--strengths", "0,4", "--crop", "10,25,80,95",
        s(&face), "--out", s(&sheet),
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("000001.jpg") && stderr.contains("Wearing_Hat=4"), "{stderr}");
    assert!(!sheet.exists(), "the only face's row was non-finite, so no sheet");
}

#[test]
fn grid_scales_and_labels_its_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let images = write_images(tmp.path(), 3, 16);
    let grid = tmp.path().join("grid.png");
    let mut args = vec!["grid", "--cols", "2", "--out", s(&grid)];
    args.extend(images.iter().map(|p| s(p)));
    assert!(glowd(&args).status.success());
    let plain = image::open(&grid).unwrap().to_rgb8();
    assert_eq!(plain.dimensions(), (2 * 18 + 2, 2 * 18 + 2));

    // --scale 2 is the same picture, each pixel drawn 2x2.
    let big = tmp.path().join("big.png");
    let mut scaled = args.clone();
    scaled[4] = s(&big);
    scaled.extend(["--scale", "2"]);
    assert!(glowd(&scaled).status.success());
    let big = image::open(&big).unwrap().to_rgb8();
    assert_eq!(big.dimensions(), (2 * plain.width(), 2 * plain.height()));
    assert!(plain.enumerate_pixels().all(|(x, y, p)| big.get_pixel(2 * x + 1, 2 * y + 1) == p));

    // A label per row widens the picture on the left (one 5x7 glyph is 6 pixels wide); the tiles move along.
    let labelled = tmp.path().join("labelled.png");
    let mut with_labels = args.clone();
    with_labels[4] = s(&labelled);
    with_labels.extend(["--label", "ab", "--label", "c"]);
    let out = glowd(&with_labels);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let labelled = image::open(&labelled).unwrap().to_rgb8();
    let left = 2 * 6 - 1 + 4;
    assert_eq!(labelled.dimensions(), (plain.width() + left, plain.height()));
    assert_eq!(labelled.get_pixel(left + 2, 2), plain.get_pixel(2, 2));

    // More labels than rows is an error that says so, before anything is written.
    let none = tmp.path().join("none.png");
    let mut too_many = args.clone();
    too_many[4] = s(&none);
    too_many.extend(["--label", "a", "--label", "b", "--label", "c"]);
    let out = glowd(&too_many);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("3 labels for 2 rows"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!none.exists());
}

#[test]
fn bench_prints_images_per_second_the_cpu_and_both_conv_peaks() {
    let out = glowd(&["bench", "--preset", "tiny", "--batch", "2", "--iters", "1", "--threads", "1", "--precision", "bf16"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let number_after = |prefix: &str| -> f64 {
        let line = text.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no `{prefix}` in:\n{text}"));
        line[prefix.len()..].split_whitespace().next().unwrap().trim_end_matches(',').parse().unwrap()
    };
    assert!(number_after("encode images/s:") > 0.0, "{text}");
    assert!(number_after("decode images/s:") > 0.0, "{text}");
    assert!(text.contains("precision bf16"), "{text}");
    assert!(number_after("conv peak GFLOP/s: fp32") > 0.0, "{text}");
    let cpu = text.lines().find(|l| l.starts_with("cpu: ")).expect("a cpu line");
    assert!(cpu.contains("; bf16 units: "), "{cpu}");
}
