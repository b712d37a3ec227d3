//! Latent-vector datasets: a run's encoded latents as Parquet shards (arrow-rs), one row per image, plus a
//! `dataset.json` manifest. Rows are sorted by source key and the writer sets no timestamps, so building the same
//! run twice gives the same bytes. Pure: rows in, file bytes out (`cli::tools` does the S3 side).
use arrow_array::builder::{FixedSizeListBuilder, Float32Builder};
use arrow_array::{ArrayRef, Float32Array, Float64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// What a dataset's latents come from: one model version at one precision. Latents of the same image at fp32 and
/// at bf16 differ in their last bits (the coupling networks round differently), so rows of both in one table would
/// make a dataset whose neighbours and statistics depend on which job ran where; a dataset holds one source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub model: String,
    pub version: String,
    pub precision: crate::precision::Precision,
}

impl Source {
    /// `Ok` when `this` (the manifest at `key`) may join a dataset whose first row came from `first`; otherwise
    /// why not, naming both.
    pub fn check_same(first: &Source, this: &Source, key: &str) -> Result<(), String> {
        if (&first.model, &first.version) != (&this.model, &this.version) {
            return Err(format!(
                "{key}: model {}@{}, the run's first is {}@{}",
                this.model, this.version, first.model, first.version
            ));
        }
        if first.precision != this.precision {
            return Err(format!(
                "{key}: encoded at {}, the run's first at {}: a dataset holds one precision (latents at fp32 and bf16 \
                 differ in their last bits); encode the run again at one precision under another run id",
                this.precision, first.precision
            ));
        }
        Ok(())
    }
}

/// One image of the dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub source_key: String,
    pub job_id: String,
    pub bits_per_dim: f64,
    /// Every level's latent, finest first, flattened (C, H, W order within a level).
    pub latent: Vec<f32>,
}

/// A direction flattened like the latents, with its norm.
pub struct Direction {
    pub name: String,
    pub values: Vec<f32>,
}

/// Reads an encode job's `latents.safetensors` (`z.0` … `z.{L-1}`) into one flat float32 vector, the dataset's
/// column: the F64 latents of a bf16 model are rounded to float32 here (`dataset.json` says which precision).
pub fn flatten_latents(bytes: &[u8]) -> Result<Vec<f32>, String> {
    let (data, _) = crate::codec::latents::from_bytes(bytes).map_err(|e| format!("latents: {e}"))?;
    if data.levels.is_empty() {
        return Err("latents: no z.0 tensor".into());
    }
    Ok(data.flat_f32())
}

/// ⟨z, d⟩ / |d|: where the image sits along an attribute direction (the score `glowd directions` reports).
pub fn score(latent: &[f32], d: &Direction) -> f32 {
    let (mut dot, mut norm) = (0f64, 0f64);
    for (z, v) in latent.iter().zip(&d.values) {
        dot += *z as f64 * *v as f64;
        norm += *v as f64 * *v as f64;
    }
    (dot / norm.sqrt().max(1e-12)) as f32
}

fn schema(dims: usize, directions: &[Direction]) -> Arc<Schema> {
    let mut fields = vec![
        Field::new("source_key", DataType::Utf8, false),
        Field::new("job_id", DataType::Utf8, false),
        Field::new("model_name", DataType::Utf8, false),
        Field::new("model_version", DataType::Utf8, false),
        Field::new("bits_per_dim", DataType::Float64, false),
        Field::new(
            "latent",
            DataType::FixedSizeList(Arc::new(Field::new("item", DataType::Float32, false)), dims as i32),
            false,
        ),
    ];
    fields.extend(directions.iter().map(|d| Field::new(format!("score_{}", d.name), DataType::Float32, false)));
    Arc::new(Schema::new(fields))
}

/// One shard's Parquet bytes.
fn shard(rows: &[Row], model: (&str, &str), dims: usize, directions: &[Direction]) -> Result<Vec<u8>, String> {
    let schema = schema(dims, directions);
    let mut latent = FixedSizeListBuilder::with_capacity(Float32Builder::with_capacity(rows.len() * dims), dims as i32, rows.len())
        .with_field(Arc::new(Field::new("item", DataType::Float32, false)));
    for r in rows {
        if r.latent.len() != dims {
            return Err(format!("{}: latent has {} values, the run's first has {dims}", r.source_key, r.latent.len()));
        }
        latent.values().append_slice(&r.latent);
        latent.append(true);
    }
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.source_key.as_str()))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.job_id.as_str()))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|_| model.0))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|_| model.1))),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.bits_per_dim))),
        Arc::new(latent.finish()),
    ];
    for d in directions {
        columns.push(Arc::new(Float32Array::from_iter_values(rows.iter().map(|r| score(&r.latent, d)))));
    }
    let batch = RecordBatch::try_new(schema.clone(), columns).map_err(|e| e.to_string())?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_created_by("glowd".to_string())
        .build();
    let mut out = Vec::new();
    let mut w = ArrowWriter::try_new(&mut out, schema, Some(props)).map_err(|e| e.to_string())?;
    w.write(&batch).map_err(|e| e.to_string())?;
    w.close().map_err(|e| e.to_string())?;
    Ok(out)
}

/// The shards (`part-00000.parquet`, …) and `dataset.json` of a run, rows sorted by source key.
pub fn build(
    run: &str,
    source: &Source,
    mut rows: Vec<Row>,
    directions: &[Direction],
    rows_per_shard: usize,
) -> Result<Vec<(String, Vec<u8>)>, String> {
    rows.sort_by(|a, b| a.source_key.cmp(&b.source_key));
    let dims = rows.first().map(|r| r.latent.len()).ok_or("the run has no encoded images")?;
    let mut files = Vec::new();
    let mut shards = Vec::new();
    for (i, chunk) in rows.chunks(rows_per_shard.max(1)).enumerate() {
        let name = format!("part-{i:05}.parquet");
        let bytes = shard(chunk, (&source.model, &source.version), dims, directions)?;
        let sha: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        shards.push(json!({"file": name, "rows": chunk.len(), "bytes": bytes.len(), "sha256": sha}));
        files.push((name, bytes));
    }
    let columns: Vec<Value> = schema(dims, directions)
        .fields()
        .iter()
        .map(|f| json!({"name": f.name(), "type": f.data_type().to_string()}))
        .collect();
    let manifest = json!({
        "version": 1,
        "run": run,
        "model": {"name": source.model, "version": source.version},
        "precision": source.precision.as_str(),
        "rows": rows.len(),
        "latent_dims": dims,
        "attributes": directions.iter().map(|d| d.name.clone()).collect::<Vec<_>>(),
        "columns": columns,
        "shards": shards,
    });
    let mut text = serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?;
    text.push(b'\n');
    files.push(("dataset.json".to_string(), text));
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    fn rows(n: usize) -> Vec<Row> {
        (0..n)
            .rev()
            .map(|i| Row {
                source_key: format!("in/{i:03}.png"),
                job_id: format!("r-{i}"),
                bits_per_dim: 3.0 + i as f64 / 100.0,
                latent: (0..12).map(|j| (i * 12 + j) as f32 * 0.01).collect(),
            })
            .collect()
    }

    #[test]
    fn shards_read_back_with_the_rows_sorted_and_scores_projected() {
        let d = Direction { name: "Smiling".into(), values: (0..12).map(|j| if j == 0 { 2.0 } else { 0.0 }).collect() };
        let files = build("r", &faces(), rows(25), std::slice::from_ref(&d), 10).unwrap();
        assert_eq!(files.iter().map(|f| f.0.as_str()).collect::<Vec<_>>(),
                   ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet", "dataset.json"]);
        let manifest: Value = serde_json::from_slice(&files[3].1).unwrap();
        assert_eq!(manifest["rows"], 25);
        assert_eq!(manifest["precision"], "fp32");
        assert_eq!(manifest["shards"][2]["rows"], 5);
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(files[1].1.clone())).unwrap().build().unwrap();
        let batch = reader.map(|b| b.unwrap()).next().unwrap();
        assert_eq!(batch.num_rows(), 10);
        let keys = batch.column_by_name("source_key").unwrap().as_string::<i32>();
        assert_eq!(keys.value(0), "in/010.png");
        let latent = batch.column_by_name("latent").unwrap().as_fixed_size_list();
        let first = latent.value(0);
        let first = first.as_primitive::<arrow_array::types::Float32Type>();
        assert_eq!(first.values().to_vec(), (0..12).map(|j| (10 * 12 + j) as f32 * 0.01).collect::<Vec<_>>());
        let score = batch.column_by_name("score_Smiling").unwrap().as_primitive::<arrow_array::types::Float32Type>();
        assert!((score.value(0) - 1.2).abs() < 1e-6, "{}", score.value(0));
        // Same rows in another order: the same bytes.
        let mut shuffled = rows(25);
        shuffled.reverse();
        assert_eq!(build("r", &faces(), shuffled, &[d], 10).unwrap(), files);
    }

    fn faces() -> Source {
        Source { model: "faces".into(), version: "1".into(), precision: crate::precision::Precision::Fp32 }
    }

    #[test]
    fn a_dataset_holds_one_model_version_at_one_precision() {
        use crate::precision::Precision;
        let first = faces();
        assert_eq!(Source::check_same(&first, &faces(), "k"), Ok(()));
        let bf16 = Source { precision: Precision::Bf16, ..faces() };
        let why = Source::check_same(&first, &bf16, "out/r-7/manifest.json").unwrap_err();
        assert!(why.starts_with("out/r-7/manifest.json: encoded at bf16, the run's first at fp32: a dataset holds one precision"), "{why}");
        let other = Source { version: "2".into(), ..faces() };
        assert_eq!(Source::check_same(&first, &other, "k").unwrap_err(), "k: model faces@2, the run's first is faces@1");
        let d = build("r", &bf16, rows(3), &[], 10).unwrap();
        let manifest: Value = serde_json::from_slice(&d.last().unwrap().1).unwrap();
        assert_eq!(manifest["precision"], "bf16");
    }

    #[test]
    fn latents_flatten_in_level_order() {
        use std::collections::HashMap;
        let z0: Vec<u8> = [1f32, 2., 3., 4.].iter().flat_map(|v| v.to_le_bytes()).collect();
        let z1: Vec<u8> = [5f32, 6.].iter().flat_map(|v| v.to_le_bytes()).collect();
        let views = HashMap::from([
            ("z.0".to_string(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1, 2, 2], &z0).unwrap()),
            ("z.1".to_string(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 1, 1], &z1).unwrap()),
        ]);
        let bytes = safetensors::serialize(views, None).unwrap();
        assert_eq!(flatten_latents(&bytes).unwrap(), vec![1., 2., 3., 4., 5., 6.]);
        assert!(flatten_latents(b"junk").is_err());
    }
}
