//! Every layer inverts, and its log-determinant equals the brute-force Jacobian's.
mod common;
use common::model::*;
use glowd::model::actnorm::ActNorm;
use glowd::model::coupling::Coupling;
use glowd::model::flow_step::FlowStep;
use glowd::model::invconv::InvConv;
use glowd::model::{CouplingKind, Layout, ZeroConvPadding};
use tch::{nn, Device, Kind, Tensor};

fn input(c: i64, s: i64, seed: i64) -> Tensor {
    tch::manual_seed(seed);
    Tensor::randn([2, c, s, s], (Kind::Float, Device::Cpu)) * 0.5
}

fn perturb_vs(vs: &nn::VarStore, seed: i64, scale: f64) {
    tch::manual_seed(seed);
    tch::no_grad(|| {
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, mut t) in vars {
            if name.ends_with("initialized") || name.ends_with("perm") || name.ends_with("sign_s") {
                continue;
            }
            let _ = t.g_add_(&(Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * scale));
        }
    });
}

/// forward then reverse returns the input; the logdet of one image matches autograd's Jacobian.
fn check_layer(
    name: &str,
    c: i64,
    forward: impl Fn(&Tensor) -> (Tensor, Tensor),
    reverse: impl Fn(&Tensor) -> Tensor,
) {
    let x = input(c, 4, 7);
    let (y, logdet) = tch::no_grad(|| forward(&x));
    let back = tch::no_grad(|| reverse(&y));
    let err = max_abs_diff(&back, &x);
    assert!(err <= 1e-4, "{name}: reverse(forward(x)) off by {err}");
    assert!(max_abs_diff(&y, &x) > 1e-3, "{name}: the layer is (nearly) the identity, the test proves nothing");
    let one = x.narrow(0, 0, 1);
    let brute = brute_force_logdet(&one, |t| forward(t).0);
    let ld = logdet.to_kind(Kind::Double);
    let ld = if ld.numel() == 1 { ld.double_value(&[]) } else { ld.double_value(&[0]) };
    assert!((brute - ld).abs() <= 1e-3 * (1.0 + brute.abs()), "{name}: logdet {ld} vs brute force {brute}");
}

#[test]
fn actnorm_inverts_and_its_logdet_is_exact() {
    let vs = nn::VarStore::new(Device::Cpu);
    let layer = ActNorm::new(vs.root(), 6);
    layer.initialize(&(input(6, 4, 1) * 3.0 + 1.0));
    assert!(layer.is_initialized());
    check_layer("actnorm", 6, |x| layer.forward(x), |y| layer.reverse(y));
}

#[test]
fn actnorm_initialisation_normalises_its_first_batch_only() {
    let vs = nn::VarStore::new(Device::Cpu);
    let layer = ActNorm::new(vs.root(), 3);
    let x = input(3, 8, 2) * 4.0 - 2.0;
    layer.initialize(&x);
    let (y, _) = tch::no_grad(|| layer.forward(&x));
    let mean = y.mean_dim(&[0i64, 2, 3][..], false, Kind::Float);
    let std = y.std_dim(&[0i64, 2, 3][..], false, false);
    assert!(mean.abs().max().double_value(&[]) < 1e-5);
    assert!((std - 1.0).abs().max().double_value(&[]) < 1e-4);
    let before = layer.scale.copy();
    layer.initialize(&(x * 10.0));
    assert_eq!(max_abs_diff(&before, &layer.scale), 0.0, "a second batch must not re-initialise");
}

#[test]
fn invconv_lu_inverts_and_its_logdet_is_exact() {
    let vs = nn::VarStore::new(Device::Cpu);
    let layer = InvConv::new(vs.root(), 12, true, 3);
    perturb_vs(&vs, 4, 0.1);
    check_layer("invconv-lu", 12, |x| layer.forward(x), |y| layer.reverse(y));
}

#[test]
fn invconv_full_inverts_and_its_logdet_is_exact() {
    let vs = nn::VarStore::new(Device::Cpu);
    let layer = InvConv::new(vs.root(), 12, false, 5);
    perturb_vs(&vs, 6, 0.1);
    check_layer("invconv-full", 12, |x| layer.forward(x), |y| layer.reverse(y));
}

#[test]
fn invconv_starts_as_a_rotation() {
    let vs = nn::VarStore::new(Device::Cpu);
    let layer = InvConv::new(vs.root(), 12, true, 9);
    let w = layer.weight().to_kind(Kind::Double);
    let wwt = w.matmul(&w.transpose(0, 1));
    assert!(max_abs_diff(&wwt, &Tensor::eye(12, (Kind::Double, Device::Cpu))) < 1e-5);
    assert!(layer.logabsdet().double_value(&[]).abs() < 1e-5);
}

#[test]
fn couplings_invert_and_their_logdets_are_exact() {
    for kind in [CouplingKind::Affine, CouplingKind::Additive] {
        for padding in [ZeroConvPadding::Zeros, ZeroConvPadding::Ones] {
            let vs = nn::VarStore::new(Device::Cpu);
            let layer = Coupling::new(vs.root(), 12, 16, kind, padding);
            perturb_vs(&vs, 8, 0.1);
            let name = format!("coupling {kind:?} {padding:?}");
            check_layer(&name, 12, |x| layer.forward(x), |y| layer.reverse(y));
            for layout in [Layout::Contiguous, Layout::ChannelsLast] {
                let folded = layer.folded(layout);
                let x = layout.apply(&input(12, 4, 3));
                check_layer(&format!("folded {name}"), 12, |x| folded.forward(x), |y| folded.reverse(y));
                let a = tch::no_grad(|| layer.forward(&x));
                let b = tch::no_grad(|| folded.forward(&x));
                assert!(max_abs_diff(&a.0, &b.0) < 1e-5, "{name} {layout:?}: folded form differs");
                assert!(max_abs_diff(&a.1, &b.1) < 1e-4, "{name} {layout:?}: folded logdet differs");
            }
        }
    }
}

#[test]
fn flow_steps_invert_in_both_forms() {
    let config = tiny(&["hidden=16"]);
    for lu in [true, false] {
        let mut config = config.clone();
        config.lu = lu;
        let vs = nn::VarStore::new(Device::Cpu);
        let step = FlowStep::new(vs.root(), &config, 12, 11);
        step.actnorm.initialize(&input(12, 4, 12));
        perturb_vs(&vs, 13, 0.05);
        check_layer("flow step", 12, |x| step.forward(x, false), |y| step.reverse(y));
        for layout in [Layout::Contiguous, Layout::ChannelsLast] {
            let folded = step.folded(layout);
            check_layer("folded flow step", 12, |x| folded.forward(x), |y| folded.reverse(y));
            let x = layout.apply(&input(12, 4, 14));
            let (a, la) = tch::no_grad(|| step.forward(&x, false));
            let (b, lb) = tch::no_grad(|| folded.forward(&x));
            assert!(max_abs_diff(&a, &b) < 1e-5, "{layout:?}");
            assert!(max_abs_diff(&la, &lb) < 1e-3, "{layout:?}");
        }
    }
}

#[test]
fn squeeze_and_unsqueeze_are_inverse_permutations() {
    let x = Tensor::arange(2 * 3 * 4 * 4, (Kind::Float, Device::Cpu)).view([2, 3, 4, 4]);
    let s = glowd::model::glow::squeeze(&x);
    assert_eq!(s.size(), [2, 12, 2, 2]);
    assert_eq!(max_abs_diff(&glowd::model::glow::unsqueeze(&s), &x), 0.0);
    // A permutation: the same multiset of values.
    assert_eq!(max_abs_diff(&s.view([-1]).sort(0, false).0, &x.view([-1])), 0.0);
}
