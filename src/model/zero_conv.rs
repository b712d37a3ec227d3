//! A 3x3 convolution initialised to zero whose output is scaled by `exp(3·logscale)`: the last layer of every
//! coupling network and the priors, so that a fresh Glow starts as the identity map with a standard normal prior.
use super::conv::ExactConv;
use super::config::ZeroConvPadding;
use super::conv::Layout;
use tch::{nn, Tensor};

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
        let out = match self.padding {
            ZeroConvPadding::Zeros => x.conv(&self.weight, Some(&self.bias), 1),
            ZeroConvPadding::Ones => {
                let padded = x.constant_pad_nd([1, 1, 1, 1]) ;
                // constant_pad_nd pads with zeros; shift the border to ones.
                let border = Tensor::ones_like(x).constant_pad_nd([1, 1, 1, 1]).neg() + 1.0;
                (padded + border).conv(&self.weight, Some(&self.bias), 0)
            }
        };
        out * (&self.logscale * 3.0).exp()
    }

    /// The same map with `exp(3·logscale)` folded into the weights: one pass instead of three at inference.
    pub fn folded(&self, layout: Layout) -> FoldedConv {
        tch::no_grad(|| {
            let s = (&self.logscale * 3.0).exp().view([-1]);
            let weight = layout.apply(&(&self.weight * s.view([-1, 1, 1, 1])));
            let bias = &self.bias * &s;
            let border = match self.padding {
                ZeroConvPadding::Zeros => None,
                ZeroConvPadding::Ones => Some(weight.shallow_clone()),
            };
            FoldedConv { weight, bias, ones_border_weight: border }
        })
    }
}

/// A folded zero conv for inference.
pub struct FoldedConv {
    pub weight: Tensor,
    pub bias: Tensor,
    ones_border_weight: Option<Tensor>,
}

impl FoldedConv {
    pub fn forward(&self, x: &Tensor) -> Tensor {
        match &self.ones_border_weight {
            None => x.conv(&self.weight, Some(&self.bias), 1),
            Some(w) => {
                let padded = x.constant_pad_nd([1, 1, 1, 1]);
                let border = Tensor::ones_like(x).constant_pad_nd([1, 1, 1, 1]).neg() + 1.0;
                (padded + border).conv(w, Some(&self.bias), 0)
            }
        }
    }
}
