//! Affine (or additive) coupling: half the channels pass unchanged and parametrise a map of the other half.
use super::conv::ExactConv;
use super::config::{CouplingKind, ZeroConvPadding};
use super::zero_conv::{FoldedConv, ZeroConv};
use super::conv::Layout;
use super::precision::Precision;
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
    /// What the network computes in (see [`Precision`]); set by `Glow::set_precision`.
    pub compute: Precision,
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
            compute: Precision::Fp32,
        }
    }

    /// The coupling network (float32 in, float32 out). In bf16 the float32 master weights are cast on every
    /// call, so autograd hands their gradients back in float32; on the CPU the bf16 activations go channels-last,
    /// the layout oneDNN's AMX kernels take without a reorder.
    fn net(&self, x_a: &Tensor) -> Tensor {
        let kind = super::precision::network_kind(self.compute);
        if kind == Kind::Float {
            let h = x_a
                .conv(&self.conv_in_weight, Some(&self.conv_in_bias), 1)
                .relu()
                .conv(&self.conv_mid_weight, Some(&self.conv_mid_bias), 0)
                .relu();
            return self.conv_out.forward(&h);
        }
        let layout = Layout::default_for(x_a.device());
        let cast = |t: &Tensor| layout.apply(&t.to_kind(kind));
        let h = cast(x_a)
            .conv(&cast(&self.conv_in_weight), Some(&self.conv_in_bias.to_kind(kind)), 1)
            .relu()
            .conv(&cast(&self.conv_mid_weight), Some(&self.conv_mid_bias.to_kind(kind)), 0)
            .relu();
        self.conv_out.forward_in(&h, kind)
    }

    pub fn forward(&self, x: &Tensor) -> (Tensor, Tensor) {
        let parts = x.chunk(2, 1);
        let (x_a, x_b) = (&parts[0], &parts[1]);
        let out = self.net(x_a);
        couple_forward(self.kind, x_a, x_b, &out)
    }

    pub fn reverse(&self, y: &Tensor) -> Tensor {
        let parts = y.chunk(2, 1);
        let (y_a, y_b) = (&parts[0], &parts[1]);
        let out = self.net(y_a);
        couple_reverse(self.kind, y_a, y_b, &out)
    }

    pub fn folded(&self, layout: Layout) -> FoldedCoupling {
        let kind = super::precision::network_kind(self.compute);
        let cast = |t: &Tensor| t.detach().to_kind(kind);
        FoldedCoupling {
            kind: self.kind,
            net_kind: kind,
            layout,
            conv_in_weight: layout.apply(&cast(&self.conv_in_weight)),
            conv_in_bias: cast(&self.conv_in_bias),
            conv_mid_weight: layout.apply(&cast(&self.conv_mid_weight)),
            conv_mid_bias: cast(&self.conv_mid_bias),
            conv_out: self.conv_out.folded_in(layout, kind),
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
    /// The network's compute kind; its input is cast to it once, its output comes back in the state's kind.
    net_kind: Kind,
    /// The layout the network's input is put in: a bf16 convolution rounds its output, so encode and decode must
    /// run the very same kernel on it (oneDNN picks kernels by layout), not merely the same values.
    layout: Layout,
    conv_in_weight: Tensor,
    conv_in_bias: Tensor,
    conv_mid_weight: Tensor,
    conv_mid_bias: Tensor,
    conv_out: FoldedConv,
}

impl FoldedCoupling {
    fn net(&self, x_a: &Tensor) -> Tensor {
        let state = x_a.kind();
        let x_a = if self.net_kind == state { x_a.shallow_clone() } else { self.layout.apply(&x_a.to_kind(self.net_kind)) };
        let h = x_a.conv(&self.conv_in_weight, Some(&self.conv_in_bias), 1).relu_();
        let h = h.conv(&self.conv_mid_weight, Some(&self.conv_mid_bias), 0).relu_();
        let out = self.conv_out.forward(&h);
        if out.kind() == state { out } else { out.to_kind(state) }
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
