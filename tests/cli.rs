//! The command line end to end on a tiny model: file naming, exact round trips, and one clear line per bad input.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn glowd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_glowd")).args(args).env("GLOWD_LOG", "warn").output().expect("runs")
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
