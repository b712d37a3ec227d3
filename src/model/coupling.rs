//! Affine (or additive) coupling: half the channels pass unchanged and parametrise a map of the other half.
use super::conv::ExactConv;
use super::config::{CouplingKind, ZeroConvPadding};
use super::zero_conv::{FoldedConv, ZeroConv};
use super::conv::Layout;
use tch::{nn, Kind, Tensor};

pub struct Coupling {
    pub kind: CouplingKind,
    /// conv3x3 (C/2 → hidden), `net.0`
    pub conv_in_weight: Tensor,
    pub conv_in_bias: Tensor,
    /// conv1x1 (hidden → hidden), `net.2`
    pub conv_mid_weight: Tensor,
    pub conv_mid_bias: Tensor,
    /// zero-initialised conv3x3 (hidden → C, or C/2 when additive), `net.4`
    pub conv_out: ZeroConv,
}

/// Offset inside the sigmoid: at initialisation (h = 0) the scale is sigmoid(2) ≈ 0.88, close to the identity
/// and bounded in (0, 1), which is what keeps training free of the NaNs an `exp` scale produces.
const SCALE_SHIFT: f64 = 2.0;

impl Coupling {
    pub fn new(p: nn::Path, channels: i64, hidden: i64, kind: CouplingKind, padding: ZeroConvPadding) -> Coupling {
        let net = &p / "net";
        let half = channels / 2;
        let out = match kind {
            CouplingKind::Affine => channels,
            CouplingKind::Additive => half,
        };
        let n0 = &net / 0;
        let n2 = &net / 2;
        Coupling {
            kind,
            conv_in_weight: n0.randn("weight", &[hidden, half, 3, 3], 0.0, 0.05),
            conv_in_bias: n0.zeros("bias", &[hidden]),
            conv_mid_weight: n2.randn("weight", &[hidden, hidden, 1, 1], 0.0, 0.05),
            conv_mid_bias: n2.zeros("bias", &[hidden]),
            conv_out: ZeroConv::new(&net / 4, hidden, out, padding),
        }
    }

    fn hidden(&self, x_a: &Tensor) -> Tensor {
        x_a.conv(&self.conv_in_weight, Some(&self.conv_in_bias), 1)
            .relu()
            .conv(&self.conv_mid_weight, Some(&self.conv_mid_bias), 0)
            .relu()
    }

    pub fn forward(&self, x: &Tensor) -> (Tensor, Tensor) {
        let parts = x.chunk(2, 1);
        let (x_a, x_b) = (&parts[0], &parts[1]);
        let out = self.conv_out.forward(&self.hidden(x_a));
        couple_forward(self.kind, x_a, x_b, &out)
    }

    pub fn reverse(&self, y: &Tensor) -> Tensor {
        let parts = y.chunk(2, 1);
        let (y_a, y_b) = (&parts[0], &parts[1]);
        let out = self.conv_out.forward(&self.hidden(y_a));
        couple_reverse(self.kind, y_a, y_b, &out)
    }

    pub fn folded(&self, layout: Layout) -> FoldedCoupling {
        FoldedCoupling {
            kind: self.kind,
            conv_in_weight: layout.apply(&self.conv_in_weight.detach()),
            conv_in_bias: self.conv_in_bias.detach(),
            conv_mid_weight: layout.apply(&self.conv_mid_weight.detach()),
            conv_mid_bias: self.conv_mid_bias.detach(),
            conv_out: self.conv_out.folded(layout),
        }
    }
}

fn couple_forward(kind: CouplingKind, x_a: &Tensor, x_b: &Tensor, out: &Tensor) -> (Tensor, Tensor) {
    let n = x_a.size()[0];
    match kind {
        CouplingKind::Affine => {
            let parts = out.chunk(2, 1);
            let (h, t) = (&parts[0], &parts[1]);
            let shifted = h + SCALE_SHIFT;
            let y_b = (x_b + t) * shifted.sigmoid();
            let logdet = shifted.log_sigmoid().sum_dim_intlist([1i64, 2, 3].as_slice(), false, Kind::Float);
            (Tensor::cat(&[x_a, &y_b], 1), logdet)
        }
        CouplingKind::Additive => {
            (Tensor::cat(&[x_a, &(x_b + out)], 1), Tensor::zeros([n], (Kind::Float, x_a.device())))
        }
    }
}

fn couple_reverse(kind: CouplingKind, y_a: &Tensor, y_b: &Tensor, out: &Tensor) -> Tensor {
    match kind {
        CouplingKind::Affine => {
            let parts = out.chunk(2, 1);
            let (h, t) = (&parts[0], &parts[1]);
            let x_b = y_b / (h + SCALE_SHIFT).sigmoid() - t;
            Tensor::cat(&[y_a, &x_b], 1)
        }
        CouplingKind::Additive => Tensor::cat(&[y_a, &(y_b - out)], 1),
    }
}

/// Inference form: detached weights with the output scale folded in.
pub struct FoldedCoupling {
    kind: CouplingKind,
    conv_in_weight: Tensor,
    conv_in_bias: Tensor,
    conv_mid_weight: Tensor,
    conv_mid_bias: Tensor,
    conv_out: FoldedConv,
}

impl FoldedCoupling {
    fn net(&self, x_a: &Tensor) -> Tensor {
        let h = x_a.conv(&self.conv_in_weight, Some(&self.conv_in_bias), 1).relu_();
        let h = h.conv(&self.conv_mid_weight, Some(&self.conv_mid_bias), 0).relu_();
        self.conv_out.forward(&h)
    }

    pub fn forward(&self, x: &Tensor) -> (Tensor, Tensor) {
        let parts = x.chunk(2, 1);
        let out = self.net(&parts[0]);
        couple_forward(self.kind, &parts[0], &parts[1], &out)
    }

    pub fn reverse(&self, y: &Tensor) -> Tensor {
        let parts = y.chunk(2, 1);
        let out = self.net(&parts[0]);
        couple_reverse(self.kind, &parts[0], &parts[1], &out)
    }
}
