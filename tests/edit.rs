//! Latent editing: exactness at strength 0, linearity, interpolation endpoints, direction files, and a held-out
//! check that a learnt +Smiling direction makes faces smile according to an independent classifier.
mod common;
use common::model::*;
use glowd::data::attributes::read_celeba;
use glowd::codec::image::{load_image, Fit};
use glowd::model::batch::pixels_to_tensor;
use glowd::model::directions::{self, DirectionAccumulator, Directions, Provenance};
use glowd::model::Glow;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

fn fake_direction(glow: &Glow, seed: i64) -> Vec<Tensor> {
    tch::manual_seed(seed);
    glow.config.latent_shapes().iter().map(|&(c, h, w)| Tensor::randn([1, c, h, w], (Kind::Float, Device::Cpu))).collect()
}

#[test]
fn strength_zero_returns_the_input_bit_for_bit() {
    let glow = ready_model(tiny(&[]), 1);
    let pixels = random_pixels(4, 3, 32, 2);
    let d = fake_direction(&glow, 3);
    let z = glow.encode(&pixels).unwrap().z;
    assert_eq!(glow.decode(&directions::shift(&z, &[(&d, 0.0)])).unwrap(), pixels);
    assert_ne!(glow.decode(&directions::shift(&z, &[(&d, 0.5)])).unwrap(), pixels);
}

#[test]
fn edits_are_linear_in_strength_and_add_up() {
    let glow = ready_model(tiny(&[]), 4);
    let z = glow.encode(&random_pixels(2, 3, 32, 5)).unwrap().z;
    let (d1, d2) = (fake_direction(&glow, 6), fake_direction(&glow, 7));
    let one = directions::shift(&z, &[(&d1, 1.0)]);
    let half = directions::shift(&z, &[(&d1, 0.5)]);
    let both = directions::shift(&z, &[(&d1, 1.0), (&d2, -2.0)]);
    for l in 0..z.len() {
        let step1 = &one[l] - &z[l];
        let step_half = &half[l] - &z[l];
        assert!(max_abs_diff(&step1, &(&step_half * 2.0)) < 1e-5);
        assert!(max_abs_diff(&(&both[l] - &z[l]), &(&d1[l] - &d2[l] * 2.0).expand_as(&z[l])) < 1e-5);
    }
}

#[test]
fn interpolation_endpoints_are_the_decoded_inputs_exactly() {
    let glow = ready_model(tiny(&[]), 8);
    let pixels = random_pixels(2, 3, 32, 9);
    let latents = glow.encode(&pixels).unwrap();
    let (a, b) = (latents.select(0).z, latents.select(1).z);
    assert_eq!(glow.decode(&directions::interpolate(&a, &b, 0.0)).unwrap(), pixels.narrow(0, 0, 1));
    assert_eq!(glow.decode(&directions::interpolate(&a, &b, 1.0)).unwrap(), pixels.narrow(0, 1, 1));
    let mid = glow.decode(&directions::interpolate(&a, &b, 0.5)).unwrap();
    assert_ne!(mid, pixels.narrow(0, 0, 1));
}

#[test]
fn directions_round_trip_and_refuse_another_model() {
    let dir = tempfile::tempdir().unwrap();
    let glow = ready_model(tiny(&["steps=1"]), 10);
    glow.save(dir.path()).unwrap();
    let z = glow.encode(&random_pixels(6, 3, 32, 11)).unwrap().z;
    let mut acc = DirectionAccumulator::new(&glow.config);
    for i in 0..6 {
        acc.add(&z, i, i % 2 == 0);
    }
    let d = acc.direction().unwrap();
    // mean of positives minus mean of negatives, by hand for level 0
    let pos = Tensor::cat(&[z[0].narrow(0, 0, 1), z[0].narrow(0, 2, 1), z[0].narrow(0, 4, 1)], 0).mean_dim(0, true, Kind::Float);
    let neg = Tensor::cat(&[z[0].narrow(0, 1, 1), z[0].narrow(0, 3, 1), z[0].narrow(0, 5, 1)], 0).mean_dim(0, true, Kind::Float);
    assert!(max_abs_diff(&d[0], &(pos - neg)) < 1e-5);
    let mut dirs = Directions::empty(directions::model_fingerprint(dir.path()).unwrap());
    let prov = Provenance { positives: 3, negatives: 3, source: "test".into(), created: "now".into(), norm: directions::norm(&d) };
    dirs.summary.attributes.insert("Smiling".into(), prov);
    dirs.vectors.insert("Smiling".into(), d.iter().map(|t| t.shallow_clone()).collect());
    dirs.save(dir.path()).unwrap();
    let back = Directions::load(dir.path(), &glow.config).unwrap().unwrap();
    assert!(max_abs_diff(&back.get("Smiling").unwrap()[1], &d[1]) < 1e-7);
    assert!(back.get("Smile").unwrap_err().to_string().contains("unknown attribute `Smile`"));
    // Other weights in the same folder: the directions no longer apply.
    ready_model(tiny(&["steps=1"]), 11).save(dir.path()).unwrap();
    let err = Directions::load(dir.path(), &glow.config).err().unwrap().to_string();
    assert!(err.contains("another model"), "{err}");
}

/// CelebA faces `range` (in the attribute file's order) cropped to the face box and resized to `size`, with their
/// 0/1 labels for attribute column `attribute`.
fn labelled_faces(
    celeba: &std::path::Path,
    attrs: &glowd::data::attributes::Attributes,
    attribute: usize,
    size: u32,
    range: std::ops::Range<usize>,
) -> (Tensor, Tensor) {
    let fit = Fit { crop: Some((10, 25, 80, 95)), resize: true };
    let imgs: Vec<_> =
        range.clone().map(|i| load_image(&celeba.join("img").join(&attrs.files[i]), 3, size, fit).unwrap()).collect();
    let labels: Vec<f32> = range.map(|i| if attrs.values[i][attribute] == Some(true) { 1.0 } else { 0.0 }).collect();
    (pixels_to_tensor(&imgs), Tensor::from_slice(&labels))
}

fn shared_celeba() -> Option<PathBuf> {
    let root = std::env::var("GLOWD_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    let celeba = root.join("celeba");
    if celeba.join("list_attr_celeba.txt").exists() {
        Some(celeba)
    } else {
        assert!(std::env::var("CI").is_err(), "CI needs ../shared/data/celeba (list_attr_celeba.txt and img/)");
        eprintln!("skipped: ../shared/data/celeba is not here");
        None
    }
}

/// Logistic regression on 8x8 grey thumbnails, trained in the test on labelled faces: an independent judge.
fn train_classifier(x: &Tensor, y: &Tensor) -> (Tensor, Tensor) {
    let mean = x.mean_dim(0, true, Kind::Float);
    let std = x.std_dim(0, true, true) + 1e-3;
    let xs = (x - &mean) / &std;
    let mut w = Tensor::zeros([xs.size()[1], 1], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let mut b = Tensor::zeros([1], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    for _ in 0..300 {
        let logits = xs.matmul(&w).squeeze_dim(1) + &b;
        let loss = logits.binary_cross_entropy_with_logits::<Tensor>(y, None, None, tch::Reduction::Mean)
            + w.square().sum(Kind::Float) * 1e-3;
        w.zero_grad();
        b.zero_grad();
        loss.backward();
        tch::no_grad(|| {
            let _ = w.g_sub_(&(w.grad() * 0.5));
            let _ = b.g_sub_(&(b.grad() * 0.5));
        });
    }
    let w_eff = w.detach() / std.transpose(0, 1);
    let b_eff = b.detach() - mean.matmul(&w_eff).squeeze_dim(1);
    (w_eff, b_eff)
}

fn thumbnails(pixels: &Tensor) -> Tensor {
    let grey = pixels.to_kind(Kind::Float).mean_dim(1, true, Kind::Float) / 255.0;
    grey.adaptive_avg_pool2d([8, 8]).view([pixels.size()[0], 64])
}

#[test]
fn smiling_direction_makes_held_out_faces_smile_by_an_independent_classifier() {
    let Some(celeba) = shared_celeba() else { return };
    let model_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/celeba-32");
    let glow = Glow::load(&model_dir, Device::Cpu).expect("the committed face model models/celeba-32");
    let attrs = read_celeba(&celeba.join("list_attr_celeba.txt")).unwrap();
    let smiling = attrs.index("Smiling").unwrap();
    let load = |range| labelled_faces(&celeba, &attrs, smiling, 32, range);
    // First half: learn the direction and the classifier. Second half: held out.
    let (train_px, train_y) = load(0..2000);
    let (test_px, test_y) = load(4000..4200);
    let mut acc = DirectionAccumulator::new(&glow.config);
    for start in (0..2000).step_by(100) {
        let z = glow.encode(&train_px.narrow(0, start, 100)).unwrap().z;
        for i in 0..100 {
            acc.add(&z, i, train_y.double_value(&[start + i]) > 0.5);
        }
    }
    let direction = acc.direction().unwrap();
    let (w, b) = train_classifier(&thumbnails(&train_px), &train_y);
    let score = |px: &Tensor| thumbnails(px).matmul(&w).squeeze_dim(1) + &b;
    let test_acc = (score(&test_px).gt(0.0).to_kind(Kind::Float).eq_tensor(&test_y))
        .to_kind(Kind::Float)
        .mean(Kind::Float)
        .double_value(&[]);
    assert!(test_acc > 0.65, "the judge itself must be better than chance: accuracy {test_acc}");

    // Edit the held-out faces that do not smile.
    let not_smiling: Vec<i64> = (0..200).filter(|&i| test_y.double_value(&[i]) < 0.5).collect();
    let faces = test_px.index_select(0, &Tensor::from_slice(&not_smiling));
    let z = glow.encode(&faces).unwrap().z;
    let edited = glow.decode(&directions::shift(&z, &[(&direction, 1.0)])).unwrap();
    let before = score(&faces);
    let after = score(&edited);
    let raised = (after.gt_tensor(&before)).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
    let change = (edited.to_kind(Kind::Float) - faces.to_kind(Kind::Float)).abs().mean(Kind::Float).double_value(&[]);
    eprintln!(
        "classifier accuracy {test_acc:.3}; +Smiling raised the smile score of {:.1}% of {} held-out faces; mean |Δpixel| {change:.1}/255",
        raised * 100.0,
        not_smiling.len()
    );
    assert!(raised > 0.7, "only {:.1}% of faces moved toward smiling", raised * 100.0);
    assert!(change < 40.0, "mean pixel change {change} is not a bounded edit");
    assert!(change > 1.0, "the edit changed almost nothing");
}

/// The 64x64 face model's committed Smiling direction at +1.0 on non-smiling faces it never saw (CelebA
/// 004001-004300: celeba-64 trained on 000001-004000 and celeba-extra): an independent smile classifier's score
/// rises for at least 90% of them, at least 60% end up read as smiling, and the mean pixel change stays under 15/255.
#[test]
fn celeba_64_smiling_at_plus_1_makes_unseen_faces_smile_by_an_independent_classifier() {
    let Some(celeba) = shared_celeba() else { return };
    let model_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/celeba-64");
    let glow = Glow::load(&model_dir, Device::Cpu).expect("the committed face model models/celeba-64");
    let dirs = Directions::load(&model_dir, &glow.config).unwrap().expect("celeba-64's directions");
    let attrs = read_celeba(&celeba.join("list_attr_celeba.txt")).unwrap();
    let smiling = attrs.index("Smiling").unwrap();
    let load = |range| labelled_faces(&celeba, &attrs, smiling, 64, range);
    // The judge learns from labelled faces 1-3,000 (thumbnails only: it never sees the model).
    let (train_px, train_y) = load(0..3000);
    let (test_px, test_y) = load(4000..4300);
    let (w, b) = train_classifier(&thumbnails(&train_px), &train_y);
    let score = |px: &Tensor| thumbnails(px).matmul(&w).squeeze_dim(1) + &b;
    let test_acc = (score(&test_px).gt(0.0).to_kind(Kind::Float).eq_tensor(&test_y))
        .to_kind(Kind::Float)
        .mean(Kind::Float)
        .double_value(&[]);
    assert!(test_acc > 0.65, "the judge itself must be better than chance: accuracy {test_acc}");
    let not_smiling: Vec<i64> = (0..300).filter(|&i| test_y.double_value(&[i]) < 0.5).collect();
    let faces = test_px.index_select(0, &Tensor::from_slice(&not_smiling));
    let direction = dirs.get("Smiling").unwrap();
    let mut edited = Vec::new();
    for start in (0..faces.size()[0]).step_by(50) {
        let chunk = faces.narrow(0, start, 50.min(faces.size()[0] - start));
        let z = glow.encode(&chunk).unwrap().z;
        let (px, finite) = glow.decode_checked(&directions::shift(&z, &[(direction, 1.0)])).unwrap();
        assert!(finite.iter().all(|f| *f), "a +1.0 Smiling edit decoded non-finite");
        edited.push(px);
    }
    let edited = Tensor::cat(&edited, 0);
    let (before, after) = (score(&faces), score(&edited));
    let raised = after.gt_tensor(&before).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
    let smiling_after = after.gt(0.0).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
    let change = (edited.to_kind(Kind::Float) - faces.to_kind(Kind::Float)).abs().mean(Kind::Float).double_value(&[]);
    eprintln!(
        "celeba-64, +1.0 Smiling on {} unseen non-smiling faces: judge accuracy {test_acc:.3}; score raised for {:.1}%, \
         read as smiling {:.1}%, mean |Δpixel| {change:.1}/255",
        not_smiling.len(),
        raised * 100.0,
        smiling_after * 100.0
    );
    assert!(raised >= 0.9, "only {:.1}% of faces moved toward smiling", raised * 100.0);
    assert!(smiling_after >= 0.6, "only {:.1}% read as smiling", smiling_after * 100.0);
    assert!(change <= 15.0, "mean pixel change {change:.1}/255");
}
