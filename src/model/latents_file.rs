//! One image's latents as a safetensors file: `z.0` … `z.{L-1}` (finest level first, shapes without the batch
//! dimension) and metadata with the likelihood and the model's latent shapes.
use super::config::GlowConfig;
use super::error::{ModelError, Result};
use super::weights::{read_safetensors, tensor_from_f32, write_safetensors};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use tch::Tensor;

pub const LATENTS_FORMAT: &str = "glowd-latents-v1";

/// Writes level tensors of one image (each `(c, h, w)`, or `(1, c, h, w)`).
pub fn write_latents(path: &Path, z: &[Tensor], bits_per_dim: f64) -> Result<()> {
    let tensors: BTreeMap<String, Tensor> = z
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let t = if t.dim() == 4 { t.squeeze_dim(0) } else { t.shallow_clone() };
            (format!("z.{i}"), t)
        })
        .collect();
    // One metadata entry: safetensors writes its metadata map in hash order, so two entries would make the same
    // latents give different bytes from run to run.
    let metadata = HashMap::from([(
        "glowd".to_string(),
        serde_json::json!({"format": LATENTS_FORMAT, "bits_per_dim": bits_per_dim}).to_string(),
    )]);
    write_safetensors(path, &tensors, Some(metadata))
}

/// Reads one image's latents and checks them against the model: returns one `(1, c, h, w)` tensor per level.
pub fn read_latents(path: &Path, config: &GlowConfig) -> Result<Vec<Tensor>> {
    let (tensors, _meta) = read_safetensors(path)?;
    let shapes = config.latent_shapes();
    let mut out = Vec::with_capacity(shapes.len());
    for (i, (c, h, w)) in shapes.iter().enumerate() {
        let name = format!("z.{i}");
        let (shape, values) = tensors.get(&name).ok_or_else(|| {
            ModelError::file(path, format!("missing tensor `{name}` (the model has {} levels)", shapes.len()))
        })?;
        if shape != &[*c, *h, *w] {
            return Err(ModelError::ShapeMismatch {
                path: path.into(),
                name,
                expected: vec![*c, *h, *w],
                found: shape.clone(),
            });
        }
        out.push(tensor_from_f32(shape, values).unsqueeze(0));
    }
    if tensors.len() != shapes.len() {
        let extra: Vec<&String> = tensors.keys().filter(|k| !k.starts_with("z.")).collect();
        return Err(ModelError::file(
            path,
            format!("{} tensors, expected {} levels (extra: {extra:?})", tensors.len(), shapes.len()),
        ));
    }
    Ok(out)
}
