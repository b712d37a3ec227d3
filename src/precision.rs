//! Arithmetic precision of the coupling networks: a plain setting, named by the model, the worker, the pipeline's
//! settings and records (the model maps it to tensor kinds in `model::precision`).
//!
//! The flow's invertibility does not depend on how precisely the coupling *networks* compute: `y_b = x_b + t(x_a)`
//! (or `(x_b + t)·s`) is undone from the same network outputs whatever their rounding, as long as decode feeds the
//! network the same `x_a` that encode did, to the bit. So `bf16` runs only the networks' convolutions in bfloat16
//! (oneDNN on CPUs with AMX-BF16 or AVX512-BF16, tensor cores on GPUs) and keeps every invertible part out of it: at
//! inference the flow's state, ActNorm with the 1x1 convolution and its inverse, the coupling arithmetic and the
//! latents in float64 (a float32 state let decode land on the other side of a bf16 rounding now and then), priors,
//! log-determinants and the likelihood in float32 or better. See the README's "Precision" section for how the cut
//! was chosen and measured.
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in float32 (the default).
    #[default]
    Fp32,
    /// Coupling networks in bfloat16; everything invertible outside them, in float64 at inference (float32 master
    /// weights, loss and log-determinants in training).
    Bf16,
}

impl Precision {
    pub const ALL: [Precision; 2] = [Precision::Fp32, Precision::Bf16];

    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Precision, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fp32" | "float32" => Ok(Precision::Fp32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            other => Err(format!("unknown precision `{other}` (expected fp32 or bf16)")),
        }
    }
}
