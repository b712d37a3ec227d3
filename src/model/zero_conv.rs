//! A 3x3 convolution initialised to zero whose output is scaled by `exp(3·logscale)`: the last layer of every
//! coupling network and the priors, so that a fresh Glow starts as the identity map with a standard normal prior.
use super::conv::ExactConv;
use super::config::ZeroConvPadding;
use super::conv::Layout;
use tch::{nn, Kind, Tensor};

pub struct ZeroConv {
    pub weight: Tensor,
    pub bias: Tensor,
    /// Per output channel; the factor 3 lets the optimiser move the scale quickly (as in the paper's code).
    pub logscale: Tensor,
    pub padding: ZeroConvPadding,
}

impl ZeroConv {
    pub fn new(p: nn::Path, in_channels: i64, out_channels: i64, padding: ZeroConvPadding) -> ZeroConv {
        ZeroConv {
            weight: p.zeros("weight", &[out_channels, in_channels, 3, 3]),
            bias: p.zeros("bias", &[out_channels]),
            logscale: p.zeros("logscale", &[1, out_channels, 1, 1]),
            padding,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        conv_padded(x, &self.weight, &self.bias, self.padding) * (&self.logscale * 3.0).exp()
    }

    /// [`ZeroConv::forward`] with the convolution computed in `kind` (a bf16 `x`, weights cast on the way: the
    /// float32 master weights get the gradients) and its output scaled in float32.
    pub fn forward_in(&self, x: &Tensor, kind: Kind) -> Tensor {
        if kind == Kind::Float {
            return self.forward(x);
        }
        let out = conv_padded(x, &self.weight.to_kind(kind), &self.bias.to_kind(kind), self.padding);
        out.to_kind(Kind::Float) * (&self.logscale * 3.0).exp()
    }

    /// The same map with `exp(3·logscale)` folded into the weights: one pass instead of three at inference.
    pub fn folded(&self, layout: Layout) -> FoldedConv {
        self.folded_in(layout, Kind::Float)
    }

    /// [`ZeroConv::folded`] computing in `kind`: the scale is folded in float32, then the weights are cast.
    pub fn folded_in(&self, layout: Layout, kind: Kind) -> FoldedConv {
        tch::no_grad(|| {
            let s = (&self.logscale * 3.0).exp().view([-1]);
            let weight = layout.apply(&(&self.weight * s.view([-1, 1, 1, 1])).to_kind(kind));
            let bias = (&self.bias * &s).to_kind(kind);
            let border = match self.padding {
                ZeroConvPadding::Zeros => None,
                ZeroConvPadding::Ones => Some(weight.shallow_clone()),
            };
            FoldedConv { weight, bias, ones_border_weight: border, kind }
        })
    }
}

/// A folded zero conv for inference.
pub struct FoldedConv {
    pub weight: Tensor,
    pub bias: Tensor,
    ones_border_weight: Option<Tensor>,
    /// What the weights are stored and computed in; the output is always float32.
    kind: Kind,
}

/// A 3x3 convolution with the zero conv's padding rule.
fn conv_padded(x: &Tensor, weight: &Tensor, bias: &Tensor, padding: ZeroConvPadding) -> Tensor {
    match padding {
        ZeroConvPadding::Zeros => x.conv(weight, Some(bias), 1),
        ZeroConvPadding::Ones => {
            let padded = x.constant_pad_nd([1, 1, 1, 1]);
            // constant_pad_nd pads with zeros; shift the border to ones.
            let border = Tensor::ones_like(x).constant_pad_nd([1, 1, 1, 1]).neg() + 1.0;
            (padded + border).conv(weight, Some(bias), 0)
        }
    }
}

impl FoldedConv {
    /// `x` in the conv's own kind (the caller casts once for the whole network); the output in float32.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let out = match &self.ones_border_weight {
            None => x.conv(&self.weight, Some(&self.bias), 1),
            Some(w) => {
                let padded = x.constant_pad_nd([1, 1, 1, 1]);
                let border = Tensor::ones_like(x).constant_pad_nd([1, 1, 1, 1]).neg() + 1.0;
                (padded + border).conv(w, Some(&self.bias), 0)
            }
        };
        if self.kind == Kind::Float { out } else { out.to_kind(Kind::Float) }
    }
}
