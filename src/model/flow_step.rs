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
    /// scale folded into its last convolution. The invertible parts keep the flow's state in [`state_kind`]: float32,
    /// or float64 when the coupling networks run in bf16 (why: the README's "Precision" section).
    pub fn folded(&self, layout: Layout) -> FoldedStep {
        tch::no_grad(|| {
            let d = |t: &Tensor| t.detach().to_kind(Kind::Double);
            let kind = state_kind(self.coupling.compute);
            // A float64 state needs W and W⁻¹ to cancel to float64 rounding; the float32 path keeps the float32
            // product it always used (its outputs' bytes stay those of earlier releases).
            let w = if kind == Kind::Double { self.invconv.weight_f64() } else { d(&self.invconv.weight()) };
            let c = w.size()[0];
            let s = d(&self.actnorm.scale).view([c]);
            let b = d(&self.actnorm.loc).view([c]);
            // y = W·diag(s)·x + W·(s ⊙ b)
            let fwd_w = &w * s.view([1, c]);
            let fwd_b = w.matmul(&(&s * &b));
            // x = diag(1/s)·W⁻¹·y − b
            let rev_w = self.invconv.inverse_f64() / s.view([c, 1]);
            let rev_b = -&b;
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

/// The kind the flow's state (the activations between layers, the latents) takes at inference.
///
/// With bf16 coupling networks, the network of a step sees its input rounded to bf16. Decode must feed it the very
/// same bits that encode did, or a rounding that lands the other way shifts the network's output by a bf16 step and
/// the error grows through the remaining steps: with a float32 state, decode's input to a network differs from
/// encode's by float32 rounding (about 1e-7), and on the committed 32x32 face model 79% of faces then lost pixels
/// (236 of the first 300). In float64 the two differ by about 1e-16, too little to move a bf16 rounding in any
/// image we tried: 0 of 8,000 faces lose a pixel (`cargo test --release --test precision`). The float64 part is
/// the 1x1 convolutions (C×C per position) and element-wise arithmetic: under 1% of the multiply-adds.
pub fn state_kind(compute: super::precision::Precision) -> Kind {
    match compute {
        super::precision::Precision::Fp32 => Kind::Float,
        super::precision::Precision::Bf16 => Kind::Double,
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
