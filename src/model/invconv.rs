//! Invertible 1x1 convolution: a C×C matrix W applied at every position. In LU form
//! `W = P·L·(U + diag(sign_s·exp(log_abs_s)))` its log-determinant is `H·W·Σ log_abs_s`, O(C).
use super::conv::ExactConv;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use tch::{nn, Kind, Tensor};

pub enum InvConv {
    Lu {
        perm: Tensor,
        lower: Tensor,
        upper: Tensor,
        log_abs_s: Tensor,
        sign_s: Tensor,
        lower_mask: Tensor,
        upper_mask: Tensor,
        eye: Tensor,
    },
    Full {
        weight: Tensor,
    },
}

/// A random rotation (QR of a Gaussian matrix), drawn from `seed` so initialisation is reproducible.
fn random_rotation(channels: i64, seed: u64) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let data: Vec<f64> =
        (0..channels * channels).map(|_| StandardNormal.sample(&mut rng)).collect();
    let g = Tensor::from_slice(&data).view([channels, channels]);
    let (q, _r) = Tensor::linalg_qr(&g, "reduced");
    q
}

impl InvConv {
    pub fn new(p: nn::Path, channels: i64, lu: bool, seed: u64) -> InvConv {
        let device = p.device();
        let w = random_rotation(channels, seed);
        if !lu {
            return InvConv::Full { weight: p.var_copy("weight", &w.to_kind(Kind::Float).to_device(device)) };
        }
        let (pm, l, u) = Tensor::linalg_lu(&w, true);
        let s = u.diagonal(0, 0, 1);
        let f = |t: &Tensor| t.to_kind(Kind::Float).to_device(device);
        let upper_mask = Tensor::ones([channels, channels], (Kind::Float, device)).triu(1);
        let lower_mask = upper_mask.transpose(0, 1).copy();
        let eye = Tensor::eye(channels, (Kind::Float, device));
        InvConv::Lu {
            perm: p.add("perm", f(&pm), false),
            lower: p.var_copy("lower", &f(&l.tril(-1))),
            upper: p.var_copy("upper", &f(&u.triu(1))),
            log_abs_s: p.var_copy("log_abs_s", &f(&s.abs().log())),
            sign_s: p.add("sign_s", f(&s.sign()), false),
            lower_mask,
            upper_mask,
            eye,
        }
    }

    /// W as a C×C matrix, differentiable in the parameters.
    pub fn weight(&self) -> Tensor {
        match self {
            InvConv::Full { weight } => weight.shallow_clone(),
            InvConv::Lu { perm, lower, upper, log_abs_s, sign_s, lower_mask, upper_mask, eye } => {
                let l = lower * lower_mask + eye;
                let u = upper * upper_mask + (sign_s * log_abs_s.exp()).diag(0);
                perm.matmul(&l).matmul(&u)
            }
        }
    }

    /// log|det W| (one position).
    pub fn logabsdet(&self) -> Tensor {
        match self {
            InvConv::Full { weight } => weight.to_kind(Kind::Double).slogdet().1.to_kind(Kind::Float),
            InvConv::Lu { log_abs_s, .. } => log_abs_s.sum(Kind::Float),
        }
    }

    /// W computed in float64 from the parameters: the exact inverse of [`InvConv::inverse_f64`] up to float64
    /// rounding, which the float64 state of bf16 inference needs ([`InvConv::weight`] rounds the product to float32).
    pub fn weight_f64(&self) -> Tensor {
        tch::no_grad(|| match self {
            InvConv::Full { weight } => weight.to_kind(Kind::Double),
            InvConv::Lu { perm, lower, upper, log_abs_s, sign_s, lower_mask, upper_mask, eye } => {
                let d = |t: &Tensor| t.to_kind(Kind::Double);
                let l = d(lower) * d(lower_mask) + d(eye);
                let u = d(upper) * d(upper_mask) + (d(sign_s) * d(log_abs_s).exp()).diag(0);
                d(perm).matmul(&l).matmul(&u)
            }
        })
    }

    /// W⁻¹ computed in float64 (float32 inversion drifts on deep models), returned in float64.
    pub fn inverse_f64(&self) -> Tensor {
        tch::no_grad(|| match self {
            InvConv::Full { weight } => weight.to_kind(Kind::Double).inverse(),
            InvConv::Lu { perm, lower, upper, log_abs_s, sign_s, lower_mask, upper_mask, eye } => {
                let d = |t: &Tensor| t.to_kind(Kind::Double);
                let l = d(lower) * d(lower_mask) + d(eye);
                let u = d(upper) * d(upper_mask) + (d(sign_s) * d(log_abs_s).exp()).diag(0);
                // W⁻¹ = U⁻¹ L⁻¹ Pᵀ, with triangular solves instead of a general inverse.
                let eye64 = d(eye);
                let l_inv = l.linalg_solve_triangular(&eye64, false, true, true);
                let u_inv = u.linalg_solve_triangular(&eye64, true, true, false);
                u_inv.matmul(&l_inv).matmul(&d(perm).transpose(0, 1))
            }
        })
    }

    pub fn forward(&self, x: &Tensor) -> (Tensor, Tensor) {
        let (_, c, h, w) = x.size4().expect("4-d input");
        let weight = self.weight().view([c, c, 1, 1]);
        (x.conv(&weight, None, 0), self.logabsdet() * (h * w) as f64)
    }

    pub fn reverse(&self, y: &Tensor) -> Tensor {
        let (_, c, _, _) = y.size4().expect("4-d input");
        let inv = self.inverse_f64().to_kind(y.kind()).view([c, c, 1, 1]);
        y.conv(&inv, None, 0)
    }
}
