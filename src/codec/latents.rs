//! The latent file: one image's latents as a safetensors file, `z.0` … `z.{L-1}` (finest level first, shapes
//! `(c, h, w)` without a batch dimension) and flat metadata `{"bits_per_dim": "...", "format": "glowd-latents-v1",
//! "precision": "fp32"|"bf16"}` (the precision of the coupling networks that computed them: decode at the same one).
//! Values are F32 from an fp32 model and F64 from a bf16 one: a bf16 model's flow state is float64, and its decode
//! gives back the encoded picture bit for bit only from the very values encode reached (README, "Precision").
//! `glowd encode` and the pipeline write exactly these bytes, and `glowd decode` reads them. Files written by
//! glowd before the formats were unified nested the metadata as JSON under one `glowd` key; they still load.
//!
//! The header is written here rather than by `safetensors::serialize`, whose metadata map is a `HashMap` and so
//! comes out in a different order from run to run: the bytes must not change when a job is redone.
use serde_json::{json, Map, Value};

/// Format tag written into every latents file.
pub const LATENTS_FORMAT: &str = "glowd-latents-v1";

/// How a latents file stores its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatentDtype {
    F32,
    F64,
}

impl LatentDtype {
    fn name(self) -> &'static str {
        match self {
            LatentDtype::F32 => "F32",
            LatentDtype::F64 => "F64",
        }
    }
}

/// One image's latent: per level, finest first, the `(c, h, w)` values row-major, and how the file stores them
/// (F32 values are held here exactly, as f64).
#[derive(Debug, Clone, PartialEq)]
pub struct LatentData {
    pub dtype: LatentDtype,
    pub levels: Vec<([usize; 3], Vec<f64>)>,
}

impl LatentData {
    /// All levels' values in order, as float32 (what a Parquet dataset holds).
    pub fn flat_f32(&self) -> Vec<f32> {
        self.levels.iter().flat_map(|(_, v)| v.iter().map(|&x| x as f32)).collect()
    }
}

/// Why latent bytes could not be written or read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LatentsError {
    #[error("level {level}: shape {shape:?} does not hold {values} values")]
    ShapeValues { level: usize, shape: [usize; 3], values: usize },
    #[error("not a safetensors file: {0}")]
    NotSafetensors(String),
    #[error("not a glowd latents file: {0}")]
    Format(String),
}

/// The file's bytes.
pub fn to_bytes(latents: &LatentData, bits_per_dim: f64, precision: &str) -> Result<Vec<u8>, LatentsError> {
    let mut header = Map::new();
    header.insert(
        "__metadata__".into(),
        json!({"bits_per_dim": format!("{bits_per_dim}"), "format": LATENTS_FORMAT, "precision": precision}),
    );
    let mut data = Vec::new();
    for (level, (shape, values)) in latents.levels.iter().enumerate() {
        if shape.iter().product::<usize>() != values.len() {
            return Err(LatentsError::ShapeValues { level, shape: *shape, values: values.len() });
        }
        let start = data.len();
        match latents.dtype {
            LatentDtype::F32 => data.extend(values.iter().flat_map(|&v| (v as f32).to_le_bytes())),
            LatentDtype::F64 => data.extend(values.iter().flat_map(|v| v.to_le_bytes())),
        }
        header.insert(
            format!("z.{level}"),
            json!({"dtype": latents.dtype.name(), "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut head = serde_json::to_vec(&Value::Object(header)).expect("a JSON map serializes");
    head.resize(head.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + head.len() + data.len());
    out.extend((head.len() as u64).to_le_bytes());
    out.extend(head);
    out.extend(data);
    Ok(out)
}

/// The latents and the recorded bits/dim (when the file has one) of a file's bytes. Levels are `z.0`, `z.1`, …
/// in order; any other tensor, a gap in the numbering, a dtype other than F32 or F64 (or levels of both), or a
/// foreign `format` is an error.
pub fn from_bytes(bytes: &[u8]) -> Result<(LatentData, Option<f64>), LatentsError> {
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| LatentsError::NotSafetensors(e.to_string()))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| LatentsError::NotSafetensors(e.to_string()))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    // Flat (current) or nested under `glowd` (the CLI's earlier layout).
    let (format, bpd) = match meta.get("glowd") {
        Some(nested) => {
            let v: Value = serde_json::from_str(nested).map_err(|e| LatentsError::Format(format!("metadata: {e}")))?;
            (v["format"].as_str().map(str::to_string), v["bits_per_dim"].as_f64())
        }
        None => (meta.get("format").cloned(), meta.get("bits_per_dim").and_then(|b| b.parse::<f64>().ok())),
    };
    if let Some(f) = &format {
        if f != LATENTS_FORMAT {
            return Err(LatentsError::Format(format!("format `{f}`, expected `{LATENTS_FORMAT}`")));
        }
    }
    let count = st.len();
    let mut levels = Vec::with_capacity(count);
    let mut dtype = None;
    for level in 0..count {
        let name = format!("z.{level}");
        let t = st.tensor(&name).map_err(|_| {
            let names: Vec<&str> = st.names();
            LatentsError::Format(format!("tensors {names:?}: expected z.0 … z.{}", count - 1))
        })?;
        let this = match t.dtype() {
            safetensors::Dtype::F32 => LatentDtype::F32,
            safetensors::Dtype::F64 => LatentDtype::F64,
            other => return Err(LatentsError::Format(format!("`{name}` is {other:?}, expected F32 or F64"))),
        };
        if *dtype.get_or_insert(this) != this {
            return Err(LatentsError::Format(format!("`{name}` is {}, `z.0` is {}", this.name(), dtype.unwrap().name())));
        }
        let shape: [usize; 3] = t
            .shape()
            .try_into()
            .map_err(|_| LatentsError::Format(format!("`{name}` has shape {:?}, expected (c, h, w)", t.shape())))?;
        let values = match this {
            LatentDtype::F32 => t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64).collect(),
            LatentDtype::F64 => t.data().chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect(),
        };
        levels.push((shape, values));
    }
    Ok((LatentData { dtype: dtype.unwrap_or(LatentDtype::F32), levels }, bpd))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LatentData {
        LatentData { dtype: LatentDtype::F32, levels: vec![([2, 1, 1], vec![1.0, -2.0]), ([1, 2, 2], vec![0.5; 4])] }
    }

    #[test]
    fn latents_are_valid_safetensors_and_stable() {
        let a = to_bytes(&sample(), 3.25, "fp32").unwrap();
        assert_eq!(a, to_bytes(&sample(), 3.25, "fp32").unwrap());
        let st = safetensors::SafeTensors::deserialize(&a).unwrap();
        assert_eq!(st.tensor("z.0").unwrap().shape(), &[2, 1, 1]);
        assert_eq!(st.tensor("z.1").unwrap().data().len(), 16);
        let (_, meta) = safetensors::SafeTensors::read_metadata(&a).unwrap();
        assert_eq!(meta.metadata().as_ref().unwrap()["format"], LATENTS_FORMAT);
        assert_eq!(meta.metadata().as_ref().unwrap()["precision"], "fp32");
    }

    #[test]
    fn what_is_written_reads_back() {
        let (back, bpd) = from_bytes(&to_bytes(&sample(), 3.25, "fp32").unwrap()).unwrap();
        assert_eq!(back, sample());
        assert_eq!(bpd, Some(3.25));
    }

    #[test]
    fn files_of_the_earlier_cli_layout_still_load() {
        // The CLI used to nest its metadata as JSON under one `glowd` key.
        let l = sample();
        let views: Vec<(String, safetensors::tensor::TensorView)> = Vec::new();
        drop(views);
        let data: Vec<Vec<u8>> =
            l.levels.iter().map(|(_, v)| v.iter().flat_map(|&x| (x as f32).to_le_bytes()).collect()).collect();
        let tensors: Vec<(String, safetensors::tensor::TensorView)> = l
            .levels
            .iter()
            .zip(&data)
            .enumerate()
            .map(|(i, ((s, _), d))| {
                (format!("z.{i}"), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.to_vec(), d).unwrap())
            })
            .collect();
        let meta = std::collections::HashMap::from([(
            "glowd".to_string(),
            json!({"format": LATENTS_FORMAT, "bits_per_dim": 4.5}).to_string(),
        )]);
        let bytes = safetensors::serialize(tensors, Some(meta)).unwrap();
        let (back, bpd) = from_bytes(&bytes).unwrap();
        assert_eq!(back, l);
        assert_eq!(bpd, Some(4.5));
    }

    #[test]
    fn f64_latents_keep_every_bit_and_f32_ones_round() {
        // 0.1 + 2^-40 is not a float32: an F64 file keeps it, an F32 file rounds it.
        let fine = 0.1 + 2f64.powi(-40);
        let wide = LatentData { dtype: LatentDtype::F64, levels: vec![([1, 1, 2], vec![fine, -3.0])] };
        let bytes = to_bytes(&wide, 3.0, "bf16").unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("z.0").unwrap().dtype(), safetensors::Dtype::F64);
        assert_eq!(from_bytes(&bytes).unwrap().0, wide);
        let narrow = LatentData { dtype: LatentDtype::F32, ..wide.clone() };
        let (back, _) = from_bytes(&to_bytes(&narrow, 3.0, "fp32").unwrap()).unwrap();
        assert_eq!(back.dtype, LatentDtype::F32);
        assert_eq!(back.levels[0].1, vec![fine as f32 as f64, -3.0]);
        assert_ne!(back.levels[0].1[0], fine);
        assert_eq!(wide.flat_f32(), vec![fine as f32, -3.0]);
    }

    #[test]
    fn a_foreign_file_is_refused_with_the_reason() {
        assert!(matches!(from_bytes(b"not a file"), Err(LatentsError::NotSafetensors(_))));
        let bad = LatentData { dtype: LatentDtype::F32, levels: vec![([2, 2, 2], vec![0.0; 3])] };
        assert!(matches!(to_bytes(&bad, 1.0, "fp32"), Err(LatentsError::ShapeValues { level: 0, .. })));
    }
}
