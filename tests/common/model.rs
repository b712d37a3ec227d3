//! Helpers of the model tests: a tiny config, perturbed weights, random pixels, a brute-force log-determinant.
use glowd::model::{Glow, GlowConfig};
use tch::{Device, Kind, Tensor};

pub fn tiny(set: &[&str]) -> GlowConfig {
    let mut c = GlowConfig::preset("tiny").unwrap();
    for s in set {
        c.set(s).unwrap();
    }
    c
}

/// Moves every trainable tensor away from its initial value, so zero-initialised layers are not the identity and a
/// mapping or sign mistake cannot hide behind a zero.
pub fn perturb(glow: &Glow, seed: i64, scale: f64) {
    tch::manual_seed(seed);
    tch::no_grad(|| {
        let mut vars: Vec<(String, Tensor)> = glow.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, mut t) in vars {
            if name.ends_with("initialized") || name.ends_with("perm") || name.ends_with("sign_s") {
                continue;
            }
            let noise = Tensor::randn(t.size(), (Kind::Float, t.device())) * scale;
            let _ = t.g_add_(&noise);
        }
    });
}

pub fn random_pixels(n: i64, c: i64, s: i64, seed: i64) -> Tensor {
    tch::manual_seed(seed);
    Tensor::randint(256, [n, c, s, s], (Kind::Uint8, Device::Cpu))
}

/// A ready model: random init, ActNorm initialised on random images, weights perturbed, inference form built.
pub fn ready_model(config: GlowConfig, seed: u64) -> Glow {
    let s = config.image_size;
    let c = config.channels;
    let mut glow = Glow::new(config, Device::Cpu, seed).unwrap();
    glow.initialize_actnorm(&random_pixels(16, c, s, seed as i64)).unwrap();
    perturb(&glow, seed as i64 + 1, 0.02);
    glow.prepare_inference();
    glow
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[])
}

/// log|det J| of `f` at `x` by building the full Jacobian with autograd, one output coordinate at a time.
pub fn brute_force_logdet(x: &Tensor, f: impl Fn(&Tensor) -> Tensor) -> f64 {
    let x = x.detach().set_requires_grad(true);
    let y = f(&x).view([-1]);
    let d = y.size()[0];
    assert_eq!(d, x.numel() as i64, "the map must be square");
    let mut rows = Vec::with_capacity(d as usize);
    for i in 0..d {
        let g = Tensor::run_backward(&[y.get(i)], &[&x], true, false);
        rows.push(g[0].view([-1]).to_kind(Kind::Double));
    }
    let j = Tensor::stack(&rows, 0);
    let (sign, logabs) = j.slogdet();
    assert!(sign.double_value(&[]) != 0.0, "Jacobian is singular");
    logabs.double_value(&[])
}
