//! One image's latents as a file ([`crate::codec::latents`] holds the format), from and to tensors.
use super::config::GlowConfig;
use super::error::{ModelError, Result};
use crate::codec::latents::{from_bytes, to_bytes, LatentData, LatentDtype};
use std::path::Path;
use tch::{Device, Kind, Tensor};

pub use crate::codec::latents::LATENTS_FORMAT;

/// Plain numbers of level tensors (each `(c, h, w)` or `(1, c, h, w)`): F64 when the tensors are float64 (a bf16
/// model's state, which decode needs to the last bit), else F32.
pub fn latent_data(z: &[Tensor]) -> LatentData {
    let dtype = if z.first().is_some_and(|t| t.kind() == Kind::Double) { LatentDtype::F64 } else { LatentDtype::F32 };
    LatentData {
        dtype,
        levels: z
            .iter()
            .map(|t| {
                let s = t.size();
                let shape = [s[s.len() - 3] as usize, s[s.len() - 2] as usize, s[s.len() - 1] as usize];
                (shape, tensor_to_f64(t))
            })
            .collect(),
    }
}

/// Writes level tensors of one image (each `(c, h, w)`, or `(1, c, h, w)`).
pub fn write_latents(path: &Path, z: &[Tensor], bits_per_dim: f64, precision: super::Precision) -> Result<()> {
    let bytes = to_bytes(&latent_data(z), bits_per_dim, precision.as_str()).map_err(|e| ModelError::file(path, e))?;
    std::fs::write(path, bytes).map_err(|e| ModelError::file(path, e))
}

/// Reads one image's latents and checks them against the model: returns one `(1, c, h, w)` tensor per level.
pub fn read_latents(path: &Path, config: &GlowConfig) -> Result<Vec<Tensor>> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::file(path, e))?;
    let (data, _bits_per_dim) = from_bytes(&bytes).map_err(|e| ModelError::file(path, e))?;
    let shapes = config.latent_shapes();
    if data.levels.len() != shapes.len() {
        return Err(ModelError::file(
            path,
            format!("{} levels, the model has {}", data.levels.len(), shapes.len()),
        ));
    }
    let mut out = Vec::with_capacity(shapes.len());
    for (i, ((c, h, w), (shape, values))) in shapes.iter().zip(&data.levels).enumerate() {
        let found: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        if found != [*c, *h, *w] {
            return Err(ModelError::ShapeMismatch { path: path.into(), name: format!("z.{i}"), expected: vec![*c, *h, *w], found });
        }
        // F32 files come back as float32 tensors, F64 ones as float64; decode takes either to its state's kind.
        let t = Tensor::from_slice(values).view(found.as_slice());
        out.push(match data.dtype {
            LatentDtype::F32 => t.to_kind(Kind::Float),
            LatentDtype::F64 => t,
        }
        .unsqueeze(0));
    }
    Ok(out)
}

/// Float64 contents of a tensor, row-major, on the CPU.
fn tensor_to_f64(t: &Tensor) -> Vec<f64> {
    let flat = t.detach().to_device(Device::Cpu).to_kind(Kind::Double).contiguous().view([-1]);
    Vec::<f64>::try_from(&flat).expect("double tensor")
}
