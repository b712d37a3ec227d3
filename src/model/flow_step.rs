//! One flow step: ActNorm → invertible 1x1 conv → coupling.
use super::conv::ExactConv;
use super::actnorm::ActNorm;
use super::config::GlowConfig;
use super::coupling::{Coupling, FoldedCoupling};
use super::invconv::InvConv;
use super::conv::Layout;
use tch::{nn, Kind, Tensor};

pub struct FlowStep {
    pub actnorm: ActNorm,
    pub invconv: InvConv,
    pub coupling: Coupling,
}

impl FlowStep {
    pub fn new(p: nn::Path, config: &GlowConfig, channels: i64, seed: u64) -> FlowStep {
        FlowStep::with_lu(p, config, channels, config.lu, seed)
    }

    /// [`FlowStep::new`] with the 1x1 conv's form given explicitly (see [`GlowConfig::level_lu`]).
    pub fn with_lu(p: nn::Path, config: &GlowConfig, channels: i64, lu: bool, seed: u64) -> FlowStep {
        FlowStep {
            actnorm: ActNorm::new(&p / "actnorm", channels),
            invconv: InvConv::new(&p / "invconv", channels, lu, seed),
            coupling: Coupling::new(
                &p / "coupling",
                channels,
                config.hidden,
                config.coupling,
                config.zero_conv_padding,
            ),
        }
    }

    /// Differentiable forward. With `init_actnorm`, an uninitialised ActNorm first initialises itself from `x`.
    pub fn forward(&self, x: &Tensor, init_actnorm: bool) -> (Tensor, Tensor) {
        if init_actnorm {
            self.actnorm.initialize(x);
        }
        let (x, ld_a) = self.actnorm.forward(x);
        let (x, ld_w) = self.invconv.forward(&x);
        let (x, ld_c) = self.coupling.forward(&x);
        (x, ld_c + ld_a + ld_w)
    }

    pub fn reverse(&self, y: &Tensor) -> Tensor {
        let x = self.coupling.reverse(y);
        let x = self.invconv.reverse(&x);
        self.actnorm.reverse(&x)
    }

    /// Inference form: ActNorm folded into the 1x1 convolution (both directions, built in float64), coupling output
    /// scale folded into its last convolution.
    pub fn folded(&self, layout: Layout) -> FoldedStep {
        tch::no_grad(|| {
            let d = |t: &Tensor| t.detach().to_kind(Kind::Double);
            let w = d(&self.invconv.weight());
            let c = w.size()[0];
            let s = d(&self.actnorm.scale).view([c]);
            let b = d(&self.actnorm.loc).view([c]);
            // y = W·diag(s)·x + W·(s ⊙ b)
            let fwd_w = &w * s.view([1, c]);
            let fwd_b = w.matmul(&(&s * &b));
            // x = diag(1/s)·W⁻¹·y − b
            let rev_w = self.invconv.inverse_f64() / s.view([c, 1]);
            let rev_b = -&b;
            let kind = self.actnorm.scale.kind();
            let logdet = s.abs().log().sum(Kind::Double).double_value(&[])
                + self.invconv.logabsdet().double_value(&[]);
            FoldedStep {
                fwd_weight: layout.apply(&fwd_w.to_kind(kind).view([c, c, 1, 1])),
                fwd_bias: fwd_b.to_kind(kind),
                rev_weight: layout.apply(&rev_w.to_kind(kind).view([c, c, 1, 1])),
                rev_bias: rev_b.to_kind(kind),
                logdet_per_position: logdet,
                coupling: self.coupling.folded(layout),
            }
        })
    }
}

pub struct FoldedStep {
    fwd_weight: Tensor,
    fwd_bias: Tensor,
    rev_weight: Tensor,
    rev_bias: Tensor,
    /// log|s| summed over channels + log|det W|; times H·W per image.
    logdet_per_position: f64,
    coupling: FoldedCoupling,
}

impl FoldedStep {
    pub fn forward(&self, x: &Tensor) -> (Tensor, Tensor) {
        let (_, _, h, w) = x.size4().expect("4-d input");
        let x = x.conv(&self.fwd_weight, Some(&self.fwd_bias), 0);
        let (y, ld) = self.coupling.forward(&x);
        (y, ld + self.logdet_per_position * (h * w) as f64)
    }

    pub fn reverse(&self, y: &Tensor) -> Tensor {
        let x = self.coupling.reverse(y);
        x.conv(&self.rev_weight, Some(&self.rev_bias), 0)
    }
}
