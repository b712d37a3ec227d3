//! Attribute directions in latent space: `mean(z | has it) − mean(z | lacks it)` over every level, stored beside the
//! model as `directions.safetensors` (tensors `<attribute>.z.<level>`) and `directions.json` (provenance).
use super::error::{ModelError, Result};
use super::weights::{read_safetensors, tensor_from_f32, write_safetensors, WEIGHTS_FILE};
use super::config::GlowConfig;
use super::glow::Glow;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use tch::{Kind, Tensor};

pub const DIRECTIONS_FILE: &str = "directions.safetensors";
pub const DIRECTIONS_SUMMARY: &str = "directions.json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Provenance {
    pub positives: usize,
    pub negatives: usize,
    /// Where the labels and images came from.
    pub source: String,
    /// UTC date and time the direction was computed (RFC 3339).
    pub created: String,
    /// L2 norm of the direction over all levels.
    pub norm: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DirectionsSummary {
    /// Fingerprint of the weights the directions were computed with: directions only make sense for that model.
    pub model_fingerprint: String,
    pub attributes: BTreeMap<String, Provenance>,
}

/// Named directions, each one tensor per level shaped like one image's latent `(1, c, h, w)`.
pub struct Directions {
    pub summary: DirectionsSummary,
    pub vectors: BTreeMap<String, Vec<Tensor>>,
}

/// FNV-1a of the weights file: cheap, stable, and changes whenever any weight does.
pub fn model_fingerprint(model_dir: &Path) -> Result<String> {
    let path = model_dir.join(WEIGHTS_FILE);
    let bytes = std::fs::read(&path).map_err(|e| ModelError::file(&path, e))?;
    let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    Ok(format!("fnv1a64:{h:016x}"))
}

/// Running sums of latents for the positive and negative examples of one attribute.
pub struct DirectionAccumulator {
    pub sum_pos: Vec<Tensor>,
    pub sum_neg: Vec<Tensor>,
    pub positives: usize,
    pub negatives: usize,
}

impl DirectionAccumulator {
    pub fn new(config: &GlowConfig) -> DirectionAccumulator {
        let zeros = || -> Vec<Tensor> {
            config
                .latent_shapes()
                .iter()
                .map(|&(c, h, w)| Tensor::zeros([1, c, h, w], (Kind::Double, tch::Device::Cpu)))
                .collect()
        };
        DirectionAccumulator { sum_pos: zeros(), sum_neg: zeros(), positives: 0, negatives: 0 }
    }

    /// Adds row `i` of a batch of latents as a positive or negative example.
    pub fn add(&mut self, z: &[Tensor], i: i64, positive: bool) {
        let sums = if positive { &mut self.sum_pos } else { &mut self.sum_neg };
        for (s, zl) in sums.iter_mut().zip(z) {
            *s += zl.narrow(0, i, 1).to_device(tch::Device::Cpu).to_kind(Kind::Double);
        }
        if positive {
            self.positives += 1
        } else {
            self.negatives += 1
        }
    }

    /// The direction, or None without examples on both sides.
    pub fn direction(&self) -> Option<Vec<Tensor>> {
        if self.positives == 0 || self.negatives == 0 {
            return None;
        }
        Some(
            self.sum_pos
                .iter()
                .zip(&self.sum_neg)
                .map(|(p, n)| (p / self.positives as f64 - n / self.negatives as f64).to_kind(Kind::Float))
                .collect(),
        )
    }
}

pub fn norm(levels: &[Tensor]) -> f64 {
    levels.iter().map(|t| t.to_kind(Kind::Double).square().sum(Kind::Double).double_value(&[])).sum::<f64>().sqrt()
}

impl Directions {
    pub fn empty(model_fingerprint: String) -> Directions {
        Directions {
            summary: DirectionsSummary { model_fingerprint, attributes: BTreeMap::new() },
            vectors: BTreeMap::new(),
        }
    }

    /// Reads a model folder's directions, or None when it has none. Fails when they belong to other weights or
    /// do not fit the model's latent shapes.
    pub fn load(model_dir: &Path, config: &GlowConfig) -> Result<Option<Directions>> {
        let Some((summary, values)) = load_values(model_dir, config)? else { return Ok(None) };
        let vectors = values
            .into_iter()
            .map(|(name, levels)| {
                let tensors = levels.iter().map(|(shape, v)| tensor_from_f32(shape, v).unsqueeze(0)).collect();
                (name, tensors)
            })
            .collect();
        Ok(Some(Directions { summary, vectors }))
    }

    pub fn save(&self, model_dir: &Path) -> Result<()> {
        let mut tensors = BTreeMap::new();
        for (name, levels) in &self.vectors {
            for (i, t) in levels.iter().enumerate() {
                tensors.insert(format!("{name}.z.{i}"), t.squeeze_dim(0));
            }
        }
        let meta = HashMap::from([("format".to_string(), "glowd-directions-v1".to_string())]);
        write_safetensors(&model_dir.join(DIRECTIONS_FILE), &tensors, Some(meta))?;
        let summary = serde_json::to_string_pretty(&self.summary).expect("serialises");
        super::weights::write_atomically(&model_dir.join(DIRECTIONS_SUMMARY), format!("{summary}\n").as_bytes())
    }

    pub fn get(&self, attribute: &str) -> Result<&Vec<Tensor>> {
        self.vectors.get(attribute).ok_or_else(|| {
            ModelError::Input(format!(
                "unknown attribute `{attribute}` (this model has: {})",
                self.vectors.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }
}

/// `z + Σ strength·direction` for every level (a batch of latents, directions broadcast over the batch).
pub fn shift(z: &[Tensor], edits: &[(&Vec<Tensor>, f64)]) -> Vec<Tensor> {
    z.iter()
        .enumerate()
        .map(|(level, zl)| {
            let mut out = zl.shallow_clone();
            for (dir, strength) in edits {
                if *strength != 0.0 {
                    out = out + dir[level].to_device(zl.device()) * *strength;
                }
            }
            out
        })
        .collect()
}

/// `(1 − t)·a + t·b` per level.
pub fn interpolate(a: &[Tensor], b: &[Tensor], t: f64) -> Vec<Tensor> {
    a.iter().zip(b).map(|(x, y)| x * (1.0 - t) + y * t).collect()
}

impl Glow {
    /// Projection of each image's latent on a direction, divided by the direction's norm: an attribute score.
    pub fn attribute_score(z: &[Tensor], direction: &[Tensor]) -> Vec<f64> {
        let n = z[0].size()[0];
        let dn = norm(direction).max(1e-12);
        let mut scores = Tensor::zeros([n], (Kind::Double, tch::Device::Cpu));
        for (zl, dl) in z.iter().zip(direction) {
            let p = (zl.to_device(tch::Device::Cpu).to_kind(Kind::Double) * dl.to_kind(Kind::Double))
                .sum_dim_intlist([1i64, 2, 3].as_slice(), false, Kind::Double);
            scores += p;
        }
        Vec::<f64>::try_from(scores / dn).expect("1-d")
    }
}

/// Each direction of a model folder as plain numbers: every level's values, finest first, flattened (C, H, W
/// order within a level), as the Parquet datasets store latents. For the tools, which need no tensors.
pub fn load_flat(model_dir: &Path, config: &GlowConfig) -> Result<Option<BTreeMap<String, Vec<f32>>>> {
    Ok(load_values(model_dir, config)?.map(|(_, values)| {
        values.into_iter().map(|(name, levels)| (name, levels.into_iter().flat_map(|(_, v)| v).collect())).collect()
    }))
}

/// One direction's levels: shape and values.
type Levels = Vec<(Vec<i64>, Vec<f32>)>;

/// The summary and every direction's levels, checked against the weights' fingerprint and the latent shapes.
fn load_values(model_dir: &Path, config: &GlowConfig) -> Result<Option<(DirectionsSummary, BTreeMap<String, Levels>)>> {
    let path = model_dir.join(DIRECTIONS_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let summary_path = model_dir.join(DIRECTIONS_SUMMARY);
    let text = std::fs::read_to_string(&summary_path).map_err(|e| ModelError::file(&summary_path, e))?;
    let summary: DirectionsSummary = serde_json::from_str(&text).map_err(|e| ModelError::file(&summary_path, e))?;
    let fingerprint = model_fingerprint(model_dir)?;
    if summary.model_fingerprint != fingerprint {
        return Err(ModelError::file(
            &path,
            format!(
                "these directions were computed for another model (fingerprint {}, this model's weights are {fingerprint}): recompute them with `glowd directions`",
                summary.model_fingerprint
            ),
        ));
    }
    let (mut tensors, _) = read_safetensors(&path)?;
    let shapes = config.latent_shapes();
    let mut vectors = BTreeMap::new();
    for name in summary.attributes.keys() {
        let mut levels = Vec::new();
        for (i, &(c, h, w)) in shapes.iter().enumerate() {
            let key = format!("{name}.z.{i}");
            let (shape, values) =
                tensors.remove(&key).ok_or_else(|| ModelError::file(&path, format!("missing tensor `{key}`")))?;
            if shape != [c, h, w] {
                return Err(ModelError::ShapeMismatch { path: path.clone(), name: key, expected: vec![c, h, w], found: shape });
            }
            levels.push((shape, values));
        }
        vectors.insert(name.clone(), levels);
    }
    Ok(Some((summary, vectors)))
}
