//! ActNorm: a per-channel affine map `y = scale * (x + loc)`, initialised from the first batch it sees so that
//! its output has zero mean and unit variance per channel.
use tch::{nn, Kind, Tensor};

pub struct ActNorm {
    pub loc: Tensor,
    pub scale: Tensor,
    /// 0 until the data-dependent initialisation ran; saved with the weights so a loaded model never re-initialises.
    pub initialized: Tensor,
}

/// Keeps `1/std` finite on constant channels.
const STD_EPS: f64 = 1e-6;

impl ActNorm {
    pub fn new(p: nn::Path, channels: i64) -> ActNorm {
        ActNorm {
            loc: p.zeros("loc", &[1, channels, 1, 1]),
            scale: p.ones("scale", &[1, channels, 1, 1]),
            initialized: p.zeros_no_train("initialized", &[]),
        }
    }

    pub fn is_initialized(&self) -> bool {
        self.initialized.double_value(&[]) != 0.0
    }

    /// Data-dependent initialisation from `x` (N,C,H,W); a no-op once initialised.
    pub fn initialize(&self, x: &Tensor) {
        if self.is_initialized() {
            return;
        }
        tch::no_grad(|| {
            let x = x.to_kind(Kind::Double);
            let mean = x.mean_dim(&[0i64, 2, 3][..], true, Kind::Double);
            let std = x.std_dim(&[0i64, 2, 3][..], false, true);
            let mut loc = self.loc.shallow_clone();
            let mut scale = self.scale.shallow_clone();
            let mut init = self.initialized.shallow_clone();
            loc.copy_(&(-mean).to_kind(loc.kind()));
            scale.copy_(&(std + STD_EPS).reciprocal().to_kind(scale.kind()));
            let _ = init.fill_(1.0);
        });
    }

    /// Per-image log-determinant: H·W·Σ log|scale|.
    pub fn logdet(&self, height: i64, width: i64) -> Tensor {
        self.scale.abs().log().sum(Kind::Float) * (height * width) as f64
    }

    pub fn forward(&self, x: &Tensor) -> (Tensor, Tensor) {
        let (_, _, h, w) = x.size4().expect("4-d input");
        ((x + &self.loc) * &self.scale, self.logdet(h, w))
    }

    pub fn reverse(&self, y: &Tensor) -> Tensor {
        y / &self.scale - &self.loc
    }
}
