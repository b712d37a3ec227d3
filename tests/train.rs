//! Training: the loss goes down, resume is exact, checkpointed gradients equal plain ones, exports round-trip.
mod common;
use common::model::*;
use glowd::data::{Dataset, Format, Target};
use glowd::codec::image::{Fit, Pixels};
use glowd::model::batch::pixels_to_tensor;
use glowd::model::{Glow, GlowConfig, Precision};
use glowd::train::adam::Algorithm;
use glowd::train::{objective, TrainOptions, Trainer};
use std::sync::atomic::AtomicBool;
use tch::{Device, Kind, Tensor};

/// Smooth, structured images (random blobs on gradients): far from the untrained model's guess, easy to learn.
fn synthetic(n: usize, size: u32, seed: u64) -> Dataset {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let images = (0..n)
        .map(|_| {
            let (cx, cy, r) = (rng.gen_range(0.0..size as f32), rng.gen_range(0.0..size as f32), rng.gen_range(3.0..10.0));
            let base: [f32; 3] = [rng.gen_range(40.0..200.0), rng.gen_range(40.0..200.0), rng.gen_range(40.0..200.0)];
            let mut data = vec![0u8; 3 * (size * size) as usize];
            for c in 0..3usize {
                for y in 0..size {
                    for x in 0..size {
                        let d = ((x as f32 - cx).powi(2) + (y as f32 - cy).powi(2)).sqrt();
                        let v = base[c] + 2.0 * y as f32 + if d < r { 50.0 } else { 0.0 };
                        data[c * (size * size) as usize + (y * size + x) as usize] = v.clamp(0.0, 255.0) as u8;
                    }
                }
            }
            Pixels { channels: 3, size, data }
        })
        .collect::<Vec<_>>();
    Dataset { names: (0..n).map(|i| format!("{i}.png")).collect(), images, skipped: vec![] }
}

fn options(steps: i64) -> TrainOptions {
    TrainOptions {
        steps,
        batch: 16,
        lr: 2e-3,
        warmup: 5,
        clip: 50.0,
        algorithm: Algorithm::Adam,
        ema: Some(0.9),
        init_batch: 64,
        eval_every: 10,
        sample_every: 1000,
        checkpoint_every: 10,
        log_every: 5,
        hflip: true,
        seed: 3,
        checkpoint_grads: false,
        val_limit: 64,
        precision: Precision::Fp32,
    }
}

fn small() -> GlowConfig {
    tiny(&["levels=2", "image_size=16", "steps=2", "hidden=16"])
}

/// bf16 coupling networks train as well as float32 over the same steps (same data, seed and batches), keep float32
/// master weights, and record their precision in training.json.
#[test]
fn bf16_training_keeps_float32_weights_and_learns_like_fp32() {
    let train = synthetic(256, 16, 1);
    let val = synthetic(64, 16, 2);
    let run = |precision: Precision| {
        let dir = tempfile::tempdir().unwrap();
        let glow = Glow::new(small(), Device::Cpu, 0).unwrap();
        let mut trainer = Trainer::new(glow, &train, &val, TrainOptions { precision, ..options(60) }, dir.path(), false).unwrap();
        trainer.quiet = true;
        trainer.initialize().unwrap();
        let summary = trainer.run(&AtomicBool::new(false)).unwrap();
        for (name, t) in trainer.glow.vs.variables() {
            assert_eq!(t.kind(), Kind::Float, "{name} is not a float32 master weight");
        }
        let recorded: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("model/training.json")).unwrap()).unwrap();
        assert_eq!(recorded["options"]["precision"], precision.as_str());
        summary.final_validation_bits_per_dim.unwrap()
    };
    let (fp32, bf16) = (run(Precision::Fp32), run(Precision::Bf16));
    eprintln!("validation bits/dim after 60 steps: fp32 {fp32:.4}, bf16 {bf16:.4}");
    assert!((fp32 - bf16).abs() < 0.05, "fp32 {fp32:.4} vs bf16 {bf16:.4}");
}

#[test]
fn a_few_dozen_steps_lower_validation_bits_per_dim_clearly() {
    let train = synthetic(256, 16, 1);
    let val = synthetic(64, 16, 2);
    let dir = tempfile::tempdir().unwrap();
    let glow = Glow::new(small(), Device::Cpu, 0).unwrap();
    let mut trainer = Trainer::new(glow, &train, &val, options(60), dir.path(), false).unwrap();
    trainer.quiet = true;
    trainer.initialize().unwrap();
    let before = trainer.validate(&trainer.export_model().unwrap()).unwrap().unwrap();
    let summary = trainer.run(&AtomicBool::new(false)).unwrap();
    let after = summary.final_validation_bits_per_dim.unwrap();
    assert!(after < before - 1.0, "validation bits/dim {before:.3} -> {after:.3}");
    for file in ["metrics.jsonl", "curve.png", "model/config.json", "model/weights.safetensors", "model/training.json"] {
        assert!(dir.path().join(file).exists(), "{file} missing");
    }
    let metrics = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 12, "one line every 5 steps");
}

#[test]
fn resume_after_an_interruption_continues_the_same_curve() {
    let train = synthetic(96, 16, 3);
    let val = synthetic(16, 16, 4);
    let straight = tempfile::tempdir().unwrap();
    let mut a = Trainer::new(Glow::new(small(), Device::Cpu, 0).unwrap(), &train, &val, options(20), straight.path(), false).unwrap();
    a.quiet = true;
    a.run(&AtomicBool::new(false)).unwrap();

    let interrupted = tempfile::tempdir().unwrap();
    let mut b = Trainer::new(Glow::new(small(), Device::Cpu, 0).unwrap(), &train, &val, options(10), interrupted.path(), false).unwrap();
    b.quiet = true;
    b.run(&AtomicBool::new(false)).unwrap();
    // A fresh process would start from a fresh (differently seeded) model: resume must overwrite all of it.
    let mut c = Trainer::new(Glow::new(small(), Device::Cpu, 99).unwrap(), &train, &val, options(20), interrupted.path(), true).unwrap();
    assert_eq!(c.step(), 10);
    c.quiet = true;
    c.run(&AtomicBool::new(false)).unwrap();

    let la = std::fs::read_to_string(straight.path().join("metrics.jsonl")).unwrap();
    let lc = std::fs::read_to_string(interrupted.path().join("metrics.jsonl")).unwrap();
    let loss = |s: &str| -> Vec<(i64, f64)> {
        s.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .map(|v| (v["step"].as_i64().unwrap(), v["train_bits_per_dim"].as_f64().unwrap()))
            .collect()
    };
    let (la, lc) = (loss(&la), loss(&lc));
    assert_eq!(la.len(), lc.len());
    for ((sa, va), (sc, vc)) in la.iter().zip(&lc) {
        assert_eq!(sa, sc);
        assert!((va - vc).abs() < 1e-4, "step {sa}: {va} vs {vc}");
    }
    let wa = Glow::load(&straight.path().join("model"), Device::Cpu).unwrap().named_tensors();
    let wc = Glow::load(&interrupted.path().join("model"), Device::Cpu).unwrap().named_tensors();
    for (name, t) in &wa {
        assert!(max_abs_diff(t, &wc[name]) < 1e-5, "{name} differs after resume");
    }
}

#[test]
fn checkpointed_gradients_equal_plain_backprop() {
    for set in [vec![], vec!["coupling=additive", "lu=false"]] {
        let mut cfg = small();
        for s in &set {
            cfg.set(s).unwrap();
        }
        let glow = ready_model(cfg, 5);
        let x = glow.pixels_to_input(&random_pixels(4, 3, 16, 6), Some(&Tensor::rand([4, 3, 16, 16], (Kind::Float, Device::Cpu)))).unwrap();
        let grads = |checkpoint: bool| {
            for (_, mut v) in glow.vs.variables() {
                v.zero_grad();
            }
            let bpd = objective::backward(&glow, &x, checkpoint);
            let mut g: Vec<(String, Tensor)> = glow
                .vs
                .variables()
                .into_iter()
                .filter(|(_, v)| v.requires_grad())
                .map(|(k, v)| (k, v.grad().copy()))
                .collect();
            g.sort_by(|a, b| a.0.cmp(&b.0));
            (bpd, g)
        };
        let (bpd_plain, plain) = grads(false);
        let (bpd_ckpt, ckpt) = grads(true);
        assert!(max_abs_diff(&bpd_plain, &bpd_ckpt) < 1e-5);
        let mut nonzero = 0;
        for ((name, a), (_, b)) in plain.iter().zip(&ckpt) {
            let scale = a.abs().max().double_value(&[]).max(1e-3);
            assert!(max_abs_diff(a, b) / scale < 1e-3, "{set:?} {name}: gradients differ");
            nonzero += (a.abs().max().double_value(&[]) > 0.0) as usize;
        }
        assert!(nonzero > plain.len() / 2, "most parameters must get a gradient");
    }
}

#[test]
fn an_exported_model_decodes_its_own_encodings_exactly() {
    let train = synthetic(64, 16, 7);
    let val = synthetic(8, 16, 8);
    let dir = tempfile::tempdir().unwrap();
    let mut t = Trainer::new(Glow::new(small(), Device::Cpu, 0).unwrap(), &train, &val, options(10), dir.path(), false).unwrap();
    t.quiet = true;
    t.run(&AtomicBool::new(false)).unwrap();
    let model = Glow::load(&dir.path().join("model"), Device::Cpu).unwrap();
    let pixels = pixels_to_tensor(&val.images);
    assert_eq!(model.decode(&model.encode(&pixels).unwrap().z).unwrap(), pixels);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("model/training.json")).unwrap()).unwrap();
    assert_eq!(summary["steps"], 10);
    assert!(summary["final_validation_bits_per_dim"].as_f64().unwrap() > 0.0);
}

#[test]
fn readers_load_npy_idx_and_celeba_layouts() {
    let dir = tempfile::tempdir().unwrap();
    let target = Target { channels: 1, size: 8, fit: Fit::default() };
    // .npy of floats in [0, 1], (N, H, W), 10x10 for an 8x8 model: resized only when asked to.
    let npy = dir.path().join("faces.npy");
    (Tensor::rand([5, 10, 10], (Kind::Double, Device::Cpu))).write_npy(&npy).unwrap();
    let resize = Target { fit: Fit { crop: None, resize: true }, ..target };
    let ds = glowd::data::load(&npy, Format::Auto, resize, usize::MAX).unwrap();
    assert_eq!(ds.len(), 5);
    assert_eq!(ds.images[0].data.len(), 64);
    let err = glowd::data::load(&npy, Format::Auto, target, usize::MAX).err().unwrap().to_string();
    assert!(err.contains("skipped 5") && err.contains("faces.npy#0") && err.contains("10x10"), "{err}");
    // IDX, gzipped
    let mut idx = vec![0u8, 0, 8, 3, 0, 0, 0, 3, 0, 0, 0, 8, 0, 0, 0, 8];
    idx.extend((0..3 * 64).map(|i| i as u8));
    let path = dir.path().join("train-images-idx3-ubyte.gz");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &idx).unwrap();
    std::fs::write(&path, gz.finish().unwrap()).unwrap();
    let ds = glowd::data::load(&path, Format::Auto, target, usize::MAX).unwrap();
    assert_eq!(ds.len(), 3);
    assert_eq!(ds.images[1].data[0], 64);
    // CelebA layout with one broken file: reported and skipped.
    let celeba = dir.path().join("celeba");
    std::fs::create_dir_all(celeba.join("img")).unwrap();
    image::GrayImage::from_pixel(8, 8, image::Luma([9])).save(celeba.join("img/000001.png")).unwrap();
    std::fs::write(celeba.join("img/000002.png"), b"broken").unwrap();
    std::fs::write(celeba.join("list_attr_celeba.txt"), "2\nSmiling Male\n000001.png 1 -1\n000002.png -1 1\n").unwrap();
    let ds = glowd::data::load(&celeba, Format::Auto, target, usize::MAX).unwrap();
    assert_eq!(ds.len(), 1);
    assert!(ds.skipped_report().unwrap().contains("000002.png"));
    let attrs = glowd::data::attributes::read_celeba(&celeba.join("list_attr_celeba.txt")).unwrap();
    assert_eq!(attrs.values[0], vec![Some(true), Some(false)]);
}

#[test]
fn the_folder_reader_skips_wrong_sizes_unless_asked_to_resize_and_crops_first() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..4 {
        let img = image::RgbImage::from_pixel(8, 8, image::Rgb([i * 10, 0, 0]));
        img.save(dir.path().join(format!("ok{i}.png"))).unwrap();
    }
    for i in 0..5 {
        let img = image::RgbImage::from_pixel(12, 10, image::Rgb([0, i * 10, 0]));
        img.save(dir.path().join(format!("big{i}.png"))).unwrap();
    }
    let target = Target { channels: 3, size: 8, fit: Fit::default() };
    let ds = glowd::data::load(dir.path(), Format::Folder, target, usize::MAX).unwrap();
    assert_eq!(ds.len(), 4);
    let report = ds.skipped_report().unwrap();
    assert!(report.starts_with("skipped 5 "), "{report}");
    assert!(report.contains("big0.png") && report.contains("12x10"), "{report}");
    let resize = Target { fit: Fit { crop: None, resize: true }, ..target };
    let ds = glowd::data::load(dir.path(), Format::Folder, resize, usize::MAX).unwrap();
    assert_eq!(ds.len(), 9);
    assert!(ds.skipped_report().is_none());
    // A crop box (the CelebA path) cuts first, then resizes: a 4x4 box of a 12x10 image becomes 8x8.
    let crop = Target { fit: Fit { crop: Some((2, 2, 6, 6)), resize: true }, ..target };
    let ds = glowd::data::load(dir.path(), Format::Folder, crop, usize::MAX).unwrap();
    assert_eq!(ds.len(), 9);
}

#[test]
fn sample_grids_follow_sample_every_not_eval_every() {
    let train = synthetic(32, 16, 11);
    let val = synthetic(8, 16, 12);
    let dir = tempfile::tempdir().unwrap();
    let opts =
        TrainOptions { sample_every: 4, eval_every: 10, log_every: 10, checkpoint_every: 100, batch: 8, ..options(12) };
    let glow = Glow::new(small(), Device::Cpu, 0).unwrap();
    let mut t = Trainer::new(glow, &train, &val, opts, dir.path(), false).unwrap();
    t.quiet = true;
    t.run(&AtomicBool::new(false)).unwrap();
    let mut written: Vec<String> = std::fs::read_dir(dir.path().join("samples"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    let expected: Vec<String> =
        [4, 8, 12].iter().flat_map(|s| [format!("step{s:07}_t0.7.png"), format!("step{s:07}_t1.0.png")]).collect();
    assert_eq!(written, expected);
}

/// Synthetic 16x16 images as files, for the command line.
fn write_folder(dir: &std::path::Path, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for (i, p) in synthetic(n, 16, 21).images.iter().enumerate() {
        glowd::codec::image::pixels_to_image(p).save(dir.join(format!("{i:03}.png"))).unwrap();
    }
}

fn metrics(out: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `glowd train` in a child process, Ctrl-C (SIGINT) once its first checkpoint is on disk, then `--resume` to the
/// end: the metrics log must be the uninterrupted run's, step for step.
#[test]
fn ctrl_c_then_resume_follows_the_uninterrupted_curve() {
    use std::process::{Command, Stdio};
    const STEPS: i64 = 400;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_folder(&data, 48);
    let args = |out: &std::path::Path| -> Vec<String> {
        [
            "train", "--data", data.to_str().unwrap(), "--preset", "tiny", "--set", "levels=2", "--set",
            "image_size=16", "--set", "steps=2", "--set", "hidden=16", "--steps", &STEPS.to_string(), "--batch", "8",
            "--lr", "2e-3",
            "--warmup", "5", "--ema", "0.9", "--init-batch", "32", "--hflip", "--seed", "5", "--log-every", "1",
            "--eval-every", "25", "--sample-every", "1000", "--checkpoint-every", "5", "--val-fraction", "0.2",
            "--threads", "1", "--quiet", "--out", out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let glowd = || {
        let mut c = common::bin::glowd();
        c.env("GLOWD_LOG", "warn").stdout(Stdio::null()).stderr(Stdio::piped());
        c
    };

    let straight = tmp.path().join("straight");
    let out = glowd().args(args(&straight)).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let interrupted = tmp.path().join("interrupted");
    let mut child = glowd().args(args(&interrupted)).spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !interrupted.join("checkpoint/state.json").exists() {
        assert!(std::time::Instant::now() < deadline, "no checkpoint within 2 minutes");
        assert!(child.try_wait().unwrap().is_none(), "glowd train exited before its first checkpoint");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let kill = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "Ctrl-C must end the run cleanly: {:?} {stderr}", out.status);
    assert!(stderr.contains("stopping after this step"), "{stderr}");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(interrupted.join("checkpoint/state.json")).unwrap()).unwrap();
    let stopped = state["step"].as_i64().unwrap();
    assert!(stopped >= 5 && stopped < STEPS, "stopped at step {stopped} of {STEPS}");
    assert!(interrupted.join("model/weights.safetensors").exists(), "Ctrl-C exports the model");
    assert_eq!(metrics(&interrupted).last().unwrap()["step"], stopped, "one metrics line per step up to the stop");

    let mut resume = args(&interrupted);
    resume.push("--resume".into());
    let out = glowd().args(&resume).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let (a, b) = (metrics(&straight), metrics(&interrupted));
    assert_eq!(a.len(), STEPS as usize);
    assert_eq!(a.len(), b.len(), "the resumed log must have every step once");
    // Resume claims to be exact (same batches, noise, optimizer state and thread count): bit for bit.
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x["step"], y["step"]);
        for key in ["train_bits_per_dim", "validation_bits_per_dim", "lr", "grad_norm"] {
            assert_eq!(x[key].as_f64(), y[key].as_f64(), "step {}: {key}", x["step"]);
        }
    }
    eprintln!("interrupted at step {stopped} of {STEPS}; the resumed curve is bit-identical");
    let wa = Glow::load(&straight.join("model"), Device::Cpu).unwrap().named_tensors();
    let wb = Glow::load(&interrupted.join("model"), Device::Cpu).unwrap().named_tensors();
    for (name, t) in &wa {
        assert!(max_abs_diff(t, &wb[name]) < 1e-5, "{name} differs after resume");
    }
}
