//! The whole model: exact encode/decode, log-likelihood, sampling, batching and persistence.
mod common;
use common::model::*;
use glowd::model::{Glow, GlowConfig};
use tch::{Device, Kind, Tensor};

fn all_levels(latents: &glowd::model::Latents) -> Tensor {
    let flat: Vec<Tensor> = latents.z.iter().map(|z| z.reshape([z.size()[0], -1])).collect();
    Tensor::cat(&flat, 1)
}

#[test]
fn u8_images_round_trip_bit_for_bit() {
    for set in [vec![], vec!["coupling=additive"], vec!["lu=false"], vec!["zero_conv_padding=ones"]] {
        let glow = ready_model(tiny(&set), 1);
        let pixels = random_pixels(6, 3, 32, 2);
        let latents = glow.encode(&pixels).unwrap();
        let back = glow.decode(&latents.z).unwrap();
        assert_eq!(back, pixels, "{set:?}: decode(encode(x)) != x");
    }
}

#[test]
fn both_memory_layouts_give_the_same_latents_and_round_trip() {
    let mut glow = ready_model(tiny(&[]), 21);
    let pixels = random_pixels(3, 3, 32, 22);
    glow.prepare_inference_with(glowd::model::Layout::Contiguous);
    let a = glow.encode(&pixels).unwrap();
    assert_eq!(glow.decode(&a.z).unwrap(), pixels);
    glow.prepare_inference_with(glowd::model::Layout::ChannelsLast);
    let b = glow.encode(&pixels).unwrap();
    assert_eq!(glow.decode(&b.z).unwrap(), pixels);
    for (za, zb) in a.z.iter().zip(&b.z) {
        assert!(max_abs_diff(za, zb) < 1e-5);
    }
}

#[test]
fn float_reverse_of_forward_is_within_1e4() {
    let glow = ready_model(tiny(&[]), 3);
    tch::manual_seed(4);
    let x = Tensor::rand([4, 3, 32, 32], (Kind::Float, Device::Cpu)) - 0.5;
    let latents = glow.encode_input(&x);
    let given: Vec<Option<Tensor>> = latents.z.iter().map(|z| Some(z.shallow_clone())).collect();
    let back = glow.reverse_flow(&given, 4, &[1.0; 3], 0).unwrap();
    let err = max_abs_diff(&back, &x);
    assert!(err <= 1e-4, "max abs error {err}");
    assert!(max_abs_diff(&all_levels(&latents).view([4, 3, 32, 32]), &x) > 0.1, "the flow must not be trivial");
}

#[test]
fn fewer_bits_round_trip_to_the_quantised_image() {
    let glow = ready_model(tiny(&["n_bits=5"]), 5);
    let pixels = random_pixels(3, 3, 32, 6);
    let back = glow.decode(&glow.encode(&pixels).unwrap().z).unwrap();
    let values = Vec::<u8>::try_from(pixels.view([-1])).unwrap();
    let quantised: Vec<u8> = values.iter().map(|v| v / 8 * 8).collect();
    assert_eq!(Vec::<u8>::try_from(back.view([-1])).unwrap(), quantised);
    assert_ne!(values, quantised, "the test needs pixels that quantisation changes");
}

#[test]
fn grey_models_round_trip() {
    let glow = ready_model(tiny(&["channels=1", "image_size=16", "levels=2"]), 7);
    let pixels = random_pixels(2, 1, 16, 8);
    assert_eq!(glow.decode(&glow.encode(&pixels).unwrap().z).unwrap(), pixels);
}

#[test]
fn whole_model_logdet_matches_the_brute_force_jacobian() {
    for set in [vec![], vec!["coupling=additive", "lu=false"]] {
        let mut set = set.clone();
        set.extend(["levels=2", "image_size=4", "steps=2", "hidden=8"]);
        let glow = ready_model(tiny(&set), 9);
        tch::manual_seed(10);
        let x = Tensor::rand([1, 3, 4, 4], (Kind::Float, Device::Cpu)) - 0.5;
        let brute = brute_force_logdet(&x, |t| all_levels(&glow.forward_flow(t, false)));
        let ld = glow.encode_input(&x).logdet.double_value(&[0]);
        let ld_train = tch::no_grad(|| glow.forward_flow(&x, false)).logdet.double_value(&[0]);
        assert!((brute - ld).abs() < 1e-3 * (1.0 + brute.abs()), "{set:?}: folded {ld} vs brute {brute}");
        assert!((brute - ld_train).abs() < 1e-3 * (1.0 + brute.abs()), "{set:?}: {ld_train} vs brute {brute}");
        assert!(brute.abs() > 0.01, "a zero logdet proves nothing");
    }
}

/// With identity ActNorm, identity 1x1 convs, additive couplings (zero output) and standard normal priors, the
/// flow is a permutation, so log p(x) = Σ log N(x_i; 0, 1) and bits/dim follow by hand.
#[test]
fn bits_per_dim_of_an_identity_flow_match_a_hand_computation() {
    let mut glow = Glow::new(tiny(&["coupling=additive"]), Device::Cpu, 0).unwrap();
    tch::no_grad(|| {
        for (name, mut t) in glow.vs.variables() {
            let value = if name.ends_with("perm") {
                Tensor::eye(t.size()[0], (Kind::Float, Device::Cpu))
            } else if name.ends_with("sign_s") || name.ends_with("actnorm.scale") || name.ends_with("initialized") {
                t.ones_like()
            } else {
                t.zeros_like()
            };
            t.copy_(&value);
        }
    });
    glow.prepare_inference();
    let pixels = random_pixels(2, 3, 32, 11);
    let latents = glow.encode(&pixels).unwrap();
    let d = 3.0 * 32.0 * 32.0;
    let values = Vec::<u8>::try_from(pixels.view([-1])).unwrap();
    for (i, bpd) in latents.bits_per_dim(&glow.config).iter().enumerate() {
        let log_p: f64 = values[i * d as usize..(i + 1) * d as usize]
            .iter()
            .map(|&v| {
                let x = (v as f64 + 0.5) / 256.0 - 0.5;
                -0.5 * (2.0 * std::f64::consts::PI).ln() - 0.5 * x * x
            })
            .sum();
        let expected = (-log_p + d * 256f64.ln()) / (d * std::f64::consts::LN_2);
        assert!((bpd - expected).abs() < 1e-5, "image {i}: {bpd} vs hand {expected}");
    }
    assert!(latents.logdet.abs().max().double_value(&[]) < 1e-6);
}

#[test]
fn a_batch_encodes_and_decodes_like_its_images_one_by_one() {
    let glow = ready_model(tiny(&[]), 12);
    let pixels = random_pixels(5, 3, 32, 13);
    let batch = glow.encode(&pixels).unwrap();
    let bpd = batch.bits_per_dim(&glow.config);
    for i in 0..5 {
        let one = glow.encode(&pixels.narrow(0, i, 1)).unwrap();
        for (a, b) in one.z.iter().zip(&batch.z) {
            assert!(max_abs_diff(a, &b.narrow(0, i, 1)) < 1e-5);
        }
        assert!((one.bits_per_dim(&glow.config)[0] - bpd[i as usize]).abs() < 1e-6);
        let z: Vec<Tensor> = batch.z.iter().map(|z| z.narrow(0, i, 1)).collect();
        assert_eq!(glow.decode(&z).unwrap(), pixels.narrow(0, i, 1));
    }
}

#[test]
fn save_then_load_gives_identical_outputs_and_never_reinitialises_actnorm() {
    let dir = tempfile::tempdir().unwrap();
    let glow = ready_model(tiny(&["steps=2"]), 14);
    glow.save(dir.path()).unwrap();
    let loaded = Glow::load(dir.path(), Device::Cpu).unwrap();
    assert!(loaded.actnorm_initialized());
    let pixels = random_pixels(3, 3, 32, 15);
    let a = glow.encode(&pixels).unwrap();
    // Encode something very different first: a re-initialising ActNorm would change its parameters here.
    let _ = loaded.encode(&(random_pixels(3, 3, 32, 16) / 4).to_kind(Kind::Uint8)).unwrap();
    let b = loaded.encode(&pixels).unwrap();
    for (za, zb) in a.z.iter().zip(&b.z) {
        assert_eq!(max_abs_diff(za, zb), 0.0);
    }
    assert_eq!(a.bits_per_dim(&glow.config), b.bits_per_dim(&loaded.config));
    for (name, t) in glow.named_tensors() {
        assert_eq!(max_abs_diff(&t, &loaded.named_tensors()[&name]), 0.0, "{name}");
    }
    // Saving is reproducible byte for byte.
    let dir2 = tempfile::tempdir().unwrap();
    loaded.save(dir2.path()).unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("weights.safetensors")).unwrap(),
        std::fs::read(dir2.path().join("weights.safetensors")).unwrap()
    );
}

#[test]
fn weight_names_follow_the_pytorch_convention() {
    let glow = Glow::new(tiny(&["steps=2"]), Device::Cpu, 0).unwrap();
    let names = glow.named_tensors();
    for expected in [
        "levels.0.steps.1.actnorm.loc",
        "levels.0.steps.1.actnorm.scale",
        "levels.0.steps.1.actnorm.initialized",
        "levels.0.steps.1.invconv.lower",
        "levels.0.steps.1.invconv.upper",
        "levels.0.steps.1.invconv.log_abs_s",
        "levels.0.steps.1.invconv.sign_s",
        "levels.0.steps.1.invconv.perm",
        "levels.0.steps.1.coupling.net.0.weight",
        "levels.0.steps.1.coupling.net.2.bias",
        "levels.0.steps.1.coupling.net.4.logscale",
        "levels.1.prior.weight",
        "levels.2.prior.logscale",
    ] {
        assert!(names.contains_key(expected), "missing {expected}: {:?}", names.keys().take(20).collect::<Vec<_>>());
    }
}

#[test]
fn sampling_is_seeded_and_temperature_zero_is_the_prior_mean() {
    let glow = ready_model(tiny(&[]), 17);
    let a = glow.sample(4, &[0.7; 3], 1).unwrap();
    let b = glow.sample(4, &[0.7; 3], 1).unwrap();
    let c = glow.sample(4, &[0.7; 3], 2).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
    let cold = glow.sample(2, &[0.0; 3], 3).unwrap();
    assert_eq!(cold.narrow(0, 0, 1), cold.narrow(0, 1, 1), "T=0 ignores the noise");
    assert!(glow.sample(1, &[0.7; 2], 0).is_err(), "wrong number of temperatures");
}

#[test]
fn decode_partial_keeps_given_levels_and_draws_the_rest() {
    let glow = ready_model(tiny(&[]), 18);
    let pixels = random_pixels(2, 3, 32, 19);
    let latents = glow.encode(&pixels).unwrap();
    let all: Vec<Option<Tensor>> = latents.z.iter().map(|z| Some(z.shallow_clone())).collect();
    assert_eq!(glow.decode_partial(&all, &[0.7; 3], 0).unwrap(), pixels);
    let coarse: Vec<Option<Tensor>> = vec![None, None, Some(latents.z[2].shallow_clone())];
    let a = glow.decode_partial(&coarse, &[0.7; 3], 5).unwrap();
    let b = glow.decode_partial(&coarse, &[0.7; 3], 5).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, pixels);
    // The kept level survives a re-encode of the (unquantised) decoded output.
    let x = glow.reverse_flow(&coarse, 2, &[0.7; 3], 5).unwrap();
    let re = glow.encode_input(&x);
    assert!(max_abs_diff(&re.z[2], &latents.z[2]) < 1e-4);
    assert!(max_abs_diff(&re.z[0], &latents.z[0]) > 0.1, "the fine level was redrawn");
}

#[test]
fn wrong_shapes_are_input_errors_not_panics() {
    let glow = ready_model(tiny(&["steps=1"]), 20);
    let err = glow.encode(&random_pixels(1, 3, 16, 0)).err().unwrap();
    assert!(err.to_string().contains("32"), "{err}");
    assert_eq!(err.disposition(), glowd::model::Disposition::DeadLetter);
    let z = glow.encode(&random_pixels(1, 3, 32, 0)).unwrap().z;
    let err = glow.decode(&z[..2]).err().unwrap();
    assert!(err.to_string().contains("3"), "{err}");
    let mut bad = z.iter().map(|t| t.shallow_clone()).collect::<Vec<_>>();
    bad[1] = Tensor::zeros([1, 5, 8, 8], (Kind::Float, Device::Cpu));
    let err = glow.decode(&bad).err().unwrap();
    assert!(err.to_string().contains("level 1"), "{err}");
}

#[test]
fn config_presets_validate_and_reject_bad_sizes() {
    assert!(GlowConfig::preset("glow-64").is_ok());
    assert!(GlowConfig::preset("huge").is_err());
    let mut c = GlowConfig::preset("tiny").unwrap();
    assert!(c.set("levels=6").is_err(), "32 is not divisible by 64");
}
