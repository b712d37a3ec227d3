//! Model folders: `config.json` + `weights.safetensors` with PyTorch-style names
//! (`levels.0.steps.3.coupling.net.0.weight`). Loading checks every tensor's name, dtype and shape.
use super::config::GlowConfig;
use super::error::{ModelError, Result};
use super::glow::Glow;
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use tch::{Device, Kind, Tensor};

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "weights.safetensors";

/// Float32 contents of a tensor, row-major, on the CPU.
pub fn tensor_to_f32(t: &Tensor) -> Vec<f32> {
    let flat = t.detach().to_device(Device::Cpu).to_kind(Kind::Float).contiguous().view([-1]);
    Vec::<f32>::try_from(&flat).expect("float tensor")
}

pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Writes named f32 tensors as a safetensors file (names sorted, so the bytes are reproducible).
pub fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, t)| {
            let shape = t.size().iter().map(|&d| d as usize).collect();
            (name.clone(), shape, f32_bytes(&tensor_to_f32(t)))
        })
        .collect();
    let views: Vec<(String, TensorView)> = data
        .iter()
        .map(|(name, shape, bytes)| {
            (name.clone(), TensorView::new(Dtype::F32, shape.clone(), bytes).expect("consistent view"))
        })
        .collect();
    let bytes = safetensors::serialize(views, metadata).map_err(|e| ModelError::file(path, e))?;
    write_atomically(path, &bytes)
}

/// Write to a temporary sibling then rename, so a crash never leaves a half-written file under the final name.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp{}",
        path.extension().and_then(|e| e.to_str()).unwrap_or(""),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes).map_err(|e| ModelError::file(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| ModelError::file(path, e))
}

/// Reads every tensor of a safetensors file as (shape, f32 values); errors name the file and the tensor.
pub fn read_safetensors(path: &Path) -> Result<(BTreeMap<String, (Vec<i64>, Vec<f32>)>, HashMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::file(path, e))?;
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| ModelError::file(path, format!("not a valid safetensors file ({e})")))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| ModelError::file(path, format!("not a valid safetensors file ({e})")))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(ModelError::DtypeMismatch {
                path: path.into(),
                name,
                expected: "F32".into(),
                found: format!("{:?}", view.dtype()),
            });
        }
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let shape = view.shape().iter().map(|&d| d as i64).collect();
        out.insert(name, (shape, values));
    }
    Ok((out, metadata))
}

pub fn tensor_from_f32(shape: &[i64], values: &[f32]) -> Tensor {
    Tensor::from_slice(values).view(shape)
}

impl Glow {
    /// Every named tensor of the model (parameters and buffers), sorted by name.
    pub fn named_tensors(&self) -> BTreeMap<String, Tensor> {
        self.vs.variables().into_iter().collect()
    }

    /// Number of trainable scalars.
    pub fn parameter_count(&self) -> i64 {
        self.vs.trainable_variables().iter().map(|t| t.numel() as i64).sum()
    }

    /// Writes `config.json` and `weights.safetensors` into `dir` (created if missing).
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::file(dir, e))?;
        let config = serde_json::to_string_pretty(&self.config).expect("config serialises");
        write_atomically(&dir.join(CONFIG_FILE), format!("{config}\n").as_bytes())?;
        let metadata = HashMap::from([("format".to_string(), "glowd-weights".to_string())]);
        write_safetensors(&dir.join(WEIGHTS_FILE), &self.named_tensors(), Some(metadata))
    }

    pub fn read_config(dir: &Path) -> Result<GlowConfig> {
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::file(&path, e))?;
        let config: GlowConfig = serde_json::from_str(&text).map_err(|e| ModelError::file(&path, e))?;
        config.validate().map_err(|e| ModelError::file(&path, e))?;
        Ok(config)
    }

    /// Loads a model folder onto `device`, ready for inference.
    pub fn load(dir: &Path, device: Device) -> Result<Glow> {
        let config = Glow::read_config(dir)?;
        let mut glow = Glow::new(config, device, 0)?;
        glow.load_weights(&dir.join(WEIGHTS_FILE))?;
        glow.prepare_inference();
        Ok(glow)
    }

    /// Replaces every tensor with the file's, after checking that names, dtypes and shapes all match.
    pub fn load_weights(&mut self, path: &Path) -> Result<()> {
        let (file, _) = read_safetensors(path)?;
        let vars = self.named_tensors();
        let expected: BTreeSet<&String> = vars.keys().collect();
        let found: BTreeSet<&String> = file.keys().collect();
        let missing: Vec<String> = expected.difference(&found).map(|s| s.to_string()).collect();
        let unexpected: Vec<String> = found.difference(&expected).map(|s| s.to_string()).collect();
        if !missing.is_empty() || !unexpected.is_empty() {
            return Err(ModelError::MissingOrUnexpected { path: path.into(), missing, unexpected });
        }
        for (name, var) in &vars {
            let (shape, _) = &file[name];
            if *shape != var.size() {
                return Err(ModelError::ShapeMismatch {
                    path: path.into(),
                    name: name.clone(),
                    expected: var.size(),
                    found: shape.clone(),
                });
            }
        }
        tch::no_grad(|| {
            for (name, var) in vars {
                let (shape, values) = &file[&name];
                let mut var = var;
                var.copy_(&tensor_from_f32(shape, values).to_device(var.device()).to_kind(var.kind()));
            }
        });
        self.invalidate_inference_cache();
        Ok(())
    }
}
