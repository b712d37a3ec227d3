//! The latent file: one image's latents as a safetensors file, `z.0` … `z.{L-1}` (finest level first, F32, shapes
//! `(c, h, w)` without a batch dimension) and flat metadata `{"bits_per_dim": "...", "format": "glowd-latents-v1",
//! "precision": "fp32"|"bf16"}` (the precision of the coupling networks that computed them: decode at the same one).
//! `glowd encode` and the pipeline write exactly these bytes, and `glowd decode` reads them. Files written by
//! glowd before the formats were unified nested the metadata as JSON under one `glowd` key; they still load.
//!
//! The header is written here rather than by `safetensors::serialize`, whose metadata map is a `HashMap` and so
//! comes out in a different order from run to run: the bytes must not change when a job is redone.
use serde_json::{json, Map, Value};

/// Format tag written into every latents file.
pub const LATENTS_FORMAT: &str = "glowd-latents-v1";

/// One image's latent: per level, finest first, the `(c, h, w)` values row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct LatentData {
    pub levels: Vec<([usize; 3], Vec<f32>)>,
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
        data.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        header.insert(format!("z.{level}"), json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}));
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
/// in order; any other tensor, a gap in the numbering, a dtype other than F32 or a foreign `format` is an error.
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
    for level in 0..count {
        let name = format!("z.{level}");
        let t = st.tensor(&name).map_err(|_| {
            let names: Vec<&str> = st.names();
            LatentsError::Format(format!("tensors {names:?}: expected z.0 … z.{}", count - 1))
        })?;
        if t.dtype() != safetensors::Dtype::F32 {
            return Err(LatentsError::Format(format!("`{name}` is {:?}, expected F32", t.dtype())));
        }
        let shape: [usize; 3] = t
            .shape()
            .try_into()
            .map_err(|_| LatentsError::Format(format!("`{name}` has shape {:?}, expected (c, h, w)", t.shape())))?;
        let values = t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        levels.push((shape, values));
    }
    Ok((LatentData { levels }, bpd))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LatentData {
        LatentData { levels: vec![([2, 1, 1], vec![1.0, -2.0]), ([1, 2, 2], vec![0.5; 4])] }
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
            l.levels.iter().map(|(_, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
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
    fn a_foreign_file_is_refused_with_the_reason() {
        assert!(matches!(from_bytes(b"not a file"), Err(LatentsError::NotSafetensors(_))));
        let bad = LatentData { levels: vec![([2, 2, 2], vec![0.0; 3])] };
        assert!(matches!(to_bytes(&bad, 1.0, "fp32"), Err(LatentsError::ShapeValues { level: 0, .. })));
    }
}
