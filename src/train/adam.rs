//! Adam / Adamax with state we can save and restore exactly (tch's optimiser does not expose its moments, and an
//! exact `--resume` needs them).
use std::collections::BTreeMap;
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    Adam,
    /// Adam with the infinity norm: the Glow paper's optimiser.
    Adamax,
}

pub struct Optimizer {
    pub algorithm: Algorithm,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// (name, parameter) in a fixed order.
    params: Vec<(String, Tensor)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    pub steps: i64,
}

impl Optimizer {
    pub fn new(algorithm: Algorithm, params: Vec<(String, Tensor)>) -> Optimizer {
        let m = params.iter().map(|(_, p)| p.zeros_like().detach()).collect();
        let v = params.iter().map(|(_, p)| p.zeros_like().detach()).collect();
        Optimizer { algorithm, beta1: 0.9, beta2: 0.999, eps: 1e-8, params, m, v, steps: 0 }
    }

    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    /// Scales gradients so their global L2 norm is at most `max`; returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max: f64) -> f64 {
        let grads: Vec<Tensor> = self.params.iter().map(|(_, p)| p.grad()).filter(|g| g.defined()).collect();
        let total = grads.iter().map(|g| g.square().sum(Kind::Double).double_value(&[])).sum::<f64>().sqrt();
        if max > 0.0 && total > max && total.is_finite() {
            let scale = max / (total + 1e-6);
            tch::no_grad(|| {
                for mut g in grads {
                    let _ = g.g_mul_scalar_(scale);
                }
            });
        }
        total
    }

    pub fn step(&mut self, lr: f64) {
        self.steps += 1;
        let t = self.steps as f64;
        let (b1, b2) = (self.beta1, self.beta2);
        tch::no_grad(|| {
            for (i, (_, p)) in self.params.iter_mut().enumerate() {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let m = &mut self.m[i];
                let _ = m.g_mul_scalar_(b1);
                let _ = m.g_add_(&(&g * (1.0 - b1)));
                let v = &mut self.v[i];
                let update = match self.algorithm {
                    Algorithm::Adam => {
                        let _ = v.g_mul_scalar_(b2);
                        let _ = v.g_add_(&(g.square() * (1.0 - b2)));
                        let m_hat = &*m / (1.0 - b1.powf(t));
                        let v_hat = &*v / (1.0 - b2.powf(t));
                        m_hat / (v_hat.sqrt() + self.eps)
                    }
                    Algorithm::Adamax => {
                        let scaled = &*v * b2;
                        let next = scaled.maximum(&(g.abs() + self.eps));
                        v.copy_(&next);
                        &*m / (1.0 - b1.powf(t)) / &*v
                    }
                };
                let _ = p.g_sub_(&(update * lr));
            }
        });
    }

    /// Moments by parameter name, for checkpoints.
    pub fn state(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for (i, (name, _)) in self.params.iter().enumerate() {
            out.insert(format!("m.{name}"), self.m[i].shallow_clone());
            out.insert(format!("v.{name}"), self.v[i].shallow_clone());
        }
        out
    }

    pub fn load_state(&mut self, state: &BTreeMap<String, Tensor>, steps: i64) -> Result<(), String> {
        tch::no_grad(|| {
            for (i, (name, _)) in self.params.iter().enumerate() {
                for (prefix, dst) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                    let key = format!("{prefix}.{name}");
                    let src = state.get(&key).ok_or_else(|| format!("optimizer state lacks `{key}`"))?;
                    if src.size() != dst.size() {
                        return Err(format!("optimizer state `{key}` has shape {:?}, expected {:?}", src.size(), dst.size()));
                    }
                    dst.copy_(&src.to_device(dst.device()));
                }
            }
            Ok(())
        })?;
        self.steps = steps;
        Ok(())
    }
}
