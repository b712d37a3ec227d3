//! Mixed precision (bf16 coupling networks, everything invertible in float32): exact round trips on real faces,
//! the same likelihood as float32, deterministic bytes across batch sizes, and training that still learns.
mod common;
use common::model::*;
use glowd::codec::image::{load_image, Fit};
use glowd::model::batch::pixels_to_tensor;
use glowd::model::{Glow, GlowConfig, Precision};
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

fn shared_celeba() -> Option<PathBuf> {
    let root = std::env::var("GLOWD_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    let celeba = root.join("celeba");
    if celeba.join("img").is_dir() {
        Some(celeba)
    } else {
        assert!(std::env::var("CI").is_err(), "CI needs ../shared/data/celeba/img");
        eprintln!("skipped: ../shared/data/celeba is not here");
        None
    }
}

fn faces(celeba: &std::path::Path, range: std::ops::Range<usize>, size: u32) -> Tensor {
    let fit = Fit { crop: Some((10, 25, 80, 95)), resize: true };
    let imgs: Vec<_> = range
        .map(|i| load_image(&celeba.join("img").join(format!("{:06}.jpg", i + 1)), 3, size, fit).unwrap())
        .collect();
    pixels_to_tensor(&imgs)
}

fn committed_face_model() -> Glow {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/celeba-32");
    Glow::load(&dir, Device::Cpu).expect("the committed face model models/celeba-32")
}

/// Pixels, and images, of `back` that differ from `x` (both `(N, C, H, W)` u8).
fn differences(back: &Tensor, x: &Tensor) -> (i64, i64) {
    let differ = back.ne_tensor(x);
    (differ.sum(Kind::Int64).int64_value(&[]), differ.flatten(1, -1).any_dim(1, false).sum(Kind::Int64).int64_value(&[]))
}

/// Pixels and images (of `n`) that do not come back from decode(encode(x)).
fn round_trip_failures(glow: &Glow, pixels: &Tensor, batch: i64) -> (i64, i64) {
    let n = pixels.size()[0];
    let (mut bad_pixels, mut bad_images) = (0, 0);
    for start in (0..n).step_by(batch as usize) {
        let x = pixels.narrow(0, start, batch.min(n - start));
        let z = glow.encode(&x).unwrap().z;
        let (p, i) = differences(&glow.decode(&z).unwrap(), &x);
        bad_pixels += p;
        bad_images += i;
    }
    (bad_pixels, bad_images)
}

#[test]
fn bf16_round_trips_every_celeba_face_bit_for_bit() {
    let Some(celeba) = shared_celeba() else { return };
    let glow = committed_face_model().with_precision(Precision::Bf16);
    let n = std::env::var("GLOWD_TEST_FACES").ok().and_then(|v| v.parse().ok()).unwrap_or(8000);
    let mut total = (0, 0);
    for start in (0..n).step_by(1000) {
        let px = faces(&celeba, start..(start + 1000).min(n), glow.config.image_size as u32);
        let (p, i) = round_trip_failures(&glow, &px, 100);
        total = (total.0 + p, total.1 + i);
    }
    eprintln!("bf16 round trip on {n} faces: {} pixels of {} images differ", total.0, total.1);
    assert_eq!(total, (0, 0), "bf16 decode(encode(x)) must give x back bit for bit");
}

/// A latents file carries a bf16 model's float64 state as F64, so `glowd decode` of `glowd encode`'s files gives the
/// faces back bit for bit too (as F32, 21 of the first 300 faces lost pixels).
#[test]
fn bf16_latents_files_decode_back_to_the_encoded_faces_bit_for_bit() {
    use glowd::model::latents_file::{read_latents, write_latents};
    let Some(celeba) = shared_celeba() else { return };
    let glow = committed_face_model().with_precision(Precision::Bf16);
    let dir = tempfile::tempdir().unwrap();
    let n = 1000;
    let (mut bad_pixels, mut bad_images) = (0, 0);
    for start in (0..n).step_by(100) {
        let x = faces(&celeba, start..start + 100, glow.config.image_size as u32);
        let z = glow.encode(&x).unwrap().z;
        let mut read: Vec<Vec<Tensor>> = Vec::new();
        for i in 0..100 {
            let path = dir.path().join(format!("{}.safetensors", start + i));
            let one: Vec<Tensor> = z.iter().map(|t| t.narrow(0, i as i64, 1).squeeze_dim(0)).collect();
            write_latents(&path, &one, 0.0, Precision::Bf16).unwrap();
            read.push(read_latents(&path, &glow.config).unwrap());
        }
        let levels: Vec<Tensor> =
            (0..z.len()).map(|l| Tensor::cat(&read.iter().map(|r| &r[l]).collect::<Vec<_>>(), 0)).collect();
        let (p, i) = differences(&glow.decode(&levels).unwrap(), &x);
        bad_pixels += p;
        bad_images += i;
    }
    eprintln!("bf16 latents files of {n} faces: {bad_pixels} pixels of {bad_images} images differ after decode");
    assert_eq!((bad_pixels, bad_images), (0, 0), "decoding a bf16 latents file must give the encoded face back");
}

/// The held-out faces of the committed model's training run (glowd's fixed 5% name-hash split).
fn held_out(celeba: &std::path::Path, size: u32) -> Tensor {
    use glowd::data::{load, Format, Split, Target};
    let fit = Fit { crop: Some((10, 25, 80, 95)), resize: true };
    let all = load(celeba, Format::Celeba, Target { channels: 3, size, fit }, usize::MAX).unwrap();
    let val = all.select(Split::Validation, 0.05);
    assert!(val.len() > 300, "{} held-out faces", val.len());
    pixels_to_tensor(&val.images)
}

fn mean_bits_per_dim(glow: &Glow, pixels: &Tensor) -> f64 {
    let n = pixels.size()[0];
    let mut all = Vec::new();
    for start in (0..n).step_by(64) {
        all.extend(glow.encode(&pixels.narrow(0, start, 64.min(n - start))).unwrap().bits_per_dim(&glow.config));
    }
    all.iter().sum::<f64>() / all.len() as f64
}

#[test]
fn bf16_likelihood_of_held_out_faces_is_within_0_01_bits_per_dim_of_fp32() {
    let Some(celeba) = shared_celeba() else { return };
    let fp32 = committed_face_model();
    let px = held_out(&celeba, fp32.config.image_size as u32);
    let a = mean_bits_per_dim(&fp32, &px);
    let b = mean_bits_per_dim(&committed_face_model().with_precision(Precision::Bf16), &px);
    eprintln!("held-out bits/dim over {} faces: fp32 {a:.5}, bf16 {b:.5}", px.size()[0]);
    assert!((a - b).abs() <= 0.01, "fp32 {a:.5} vs bf16 {b:.5}");
}

#[test]
fn bf16_bytes_do_not_depend_on_batch_size_or_rerun() {
    let Some(celeba) = shared_celeba() else { return };
    let glow = committed_face_model().with_precision(Precision::Bf16);
    let px = faces(&celeba, 0..12, glow.config.image_size as u32);
    let whole = glow.encode(&px).unwrap().z;
    let again = glow.encode(&px).unwrap().z;
    // Batches of two or more: a batch of one may take other kernels (the pipeline pads a lone image to two).
    for batch in [2usize, 3, 5] {
        let mut parts: Vec<Vec<Tensor>> = (0..whole.len()).map(|_| vec![]).collect();
        let mut start = 0usize;
        while start < 12 {
            let len = batch.min(12 - start);
            // A lone last image goes with its neighbour, as the pipeline pads it.
            let (from, skip) = if len == 1 { (start - 1, 1) } else { (start, 0) };
            let z = glow.encode(&px.narrow(0, from as i64, (len + skip) as i64)).unwrap().z;
            for (l, zl) in z.iter().enumerate() {
                parts[l].push(zl.narrow(0, skip as i64, len as i64));
            }
            start += len;
        }
        for (l, p) in parts.iter().enumerate() {
            assert!(Tensor::cat(p, 0).equal(&whole[l]), "level {l}: latents differ between batch 12 and batch {batch}");
        }
    }
    for (a, b) in whole.iter().zip(&again) {
        assert!(a.equal(b), "a rerun gave other latents");
    }
    let one_by_one: Vec<Tensor> = (0..12).step_by(2).map(|i| glow.decode(&whole.iter().map(|z| z.narrow(0, i, 2)).collect::<Vec<_>>()).unwrap()).collect();
    assert!(Tensor::cat(&one_by_one, 0).equal(&glow.decode(&whole).unwrap()), "decoded bytes depend on the batch");
}

#[test]
fn bf16_round_trips_a_random_glow_64_over_64_real_faces_and_strength_0_edits_are_identity() {
    let Some(celeba) = shared_celeba() else { return };
    let config = GlowConfig::preset("glow-64").unwrap();
    let px = faces(&celeba, 100..164, 64);
    let mut glow = Glow::new(config, Device::Cpu, 7).unwrap();
    glow.initialize_actnorm(&px.narrow(0, 0, 32)).unwrap();
    // Zero-initialised output convolutions would make every coupling the identity: move them a little.
    perturb(&glow, 8, 0.002);
    glow.prepare_inference();
    let fp32 = round_trip_failures(&glow, &px.narrow(0, 0, 16), 16);
    assert_eq!(fp32, (0, 0), "the float32 round trip of this random model already fails");
    glow.set_precision(Precision::Bf16);
    let (bad_pixels, bad_images) = round_trip_failures(&glow, &px, 16);
    eprintln!("random glow-64, bf16: {bad_pixels} pixels of {bad_images} of 64 faces differ");
    assert_eq!((bad_pixels, bad_images), (0, 0));
    let z = glow.encode(&px.narrow(0, 0, 8)).unwrap().z;
    let direction: Vec<Tensor> = z.iter().map(|t| Tensor::ones_like(&t.narrow(0, 0, 1))).collect();
    let edited = glow.decode(&glowd::model::directions::shift(&z, &[(&direction, 0.0)])).unwrap();
    assert!(edited.equal(&px.narrow(0, 0, 8)), "a strength-0 edit changed pixels");
}
