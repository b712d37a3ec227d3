//! `glowd validate`, `glowd submit`, `glowd status` and `glowd dataset`: the commands around a running daemon.
//! Each takes the pipeline file the daemon runs with, so they agree on topics, buckets and prefixes.
use crate::job::{join_key, JobId, JobKind, Manifest, MediaType};
use crate::settings::PipelineFile;
use crate::tools::ops::{self, get, list, put, Services, SubmitRequest};
use crate::tools::submit::{self, SubmitSettings};
use anyhow::{anyhow, Context, Result};
use clap::Args;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args)]
pub struct ValidateArgs {
    /// Pipeline file to check: its tables and keys, that its models load, and that the [submit] job's model
    /// and attributes exist
    pipeline: PathBuf,
}

/// Checks a pipeline file before anything runs; prints every problem by key. Returns the number found.
pub fn validate(args: ValidateArgs) -> Result<usize> {
    let file = match PipelineFile::load(&args.pipeline) {
        Ok(f) => f,
        Err(e) => {
            println!("invalid: {e}");
            return Ok(1);
        }
    };
    let mut problems = Vec::new();
    let mut attributes: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for m in &file.models {
        match crate::model::Glow::load(&m.path, tch::Device::Cpu)
            .and_then(|glow| crate::model::directions::Directions::load(&m.path, &glow.config))
        {
            Ok(d) => {
                let names = d.map(|d| d.vectors.keys().cloned().collect()).unwrap_or_default();
                attributes.insert((m.name.clone(), m.version.clone()), names);
            }
            Err(e) => problems.push(format!("models.{}: {e}", m.name)),
        }
    }
    if file.models.is_empty() {
        problems.push("models: no model (give [[models]] or models_dir)".into());
    }
    if let Some(s) = &file.submit {
        problems.extend(check_submit(s, &attributes));
        if file.kafka.is_none() || file.s3.is_none() {
            problems.push("submit: needs the [kafka] and [s3] tables to enqueue and list".into());
        }
    }
    let name = args.pipeline.display();
    if problems.is_empty() {
        let models: Vec<String> = file.models.iter().map(|m| format!("{}@{}", m.name, m.version)).collect();
        println!("ok: {name}: models {}", models.join(", "));
    }
    for p in &problems {
        println!("invalid: {name}: {p}");
    }
    Ok(problems.len())
}

fn check_submit(s: &SubmitSettings, attributes: &BTreeMap<(String, String), BTreeSet<String>>) -> Vec<String> {
    let template = match submit::template(s, &[]) {
        Ok(t) => t,
        Err(e) => return vec![e],
    };
    let mut problems = Vec::new();
    if let Err(e) = submit::job(&template, "validate", "s3://bucket/key.png") {
        problems.push(e);
    }
    if let Some(p) = &s.prefix {
        if let Err(e) = crate::job::key::parse_s3_uri(p.trim_end_matches('/')) {
            problems.push(format!("submit.prefix: {e}"));
        }
    }
    let model = (
        template["model"]["name"].as_str().unwrap_or_default().to_string(),
        template["model"]["version"].as_str().unwrap_or_default().to_string(),
    );
    let Some(known) = attributes.get(&model) else {
        problems.push(format!("submit.job.model: {}@{} is not among the pipeline's models", model.0, model.1));
        return problems;
    };
    for (list, field) in [("edits", "attribute"), ("attributes", "attribute")] {
        for (i, e) in template[list].as_array().into_iter().flatten().enumerate() {
            let a = e[field].as_str().unwrap_or_default();
            if !known.contains(a) {
                problems.push(format!("submit.job.{list}[{i}].{field}: `{a}` is not a direction of {}@{}", model.0, model.1));
            }
        }
    }
    problems
}

#[derive(Args)]
pub struct SubmitArgs {
    /// Pipeline file: [kafka] (jobs topic), [s3], [output] and the [submit] job template
    #[arg(long)]
    pipeline: PathBuf,
    /// Images to submit: every object under this prefix whose name ends in one of submit.extensions
    #[arg(long)]
    prefix: Option<String>,
    /// Edit strength, replacing the template's edits (repeat for several): --attr Smiling=+0.8
    #[arg(long = "attr", value_parser = submit::parse_attr)]
    attrs: Vec<(String, f64)>,
    /// Submit at most this many images (the first in key order)
    #[arg(long)]
    limit: Option<usize>,
    /// Skip images whose job already wrote its manifest
    #[arg(long)]
    resume: bool,
    /// Run id (default: derived from the prefix and the job template, so resubmitting is the same run)
    #[arg(long)]
    run: Option<String>,
    /// Jobs per second (default: submit.rate_per_second)
    #[arg(long)]
    rate: Option<f64>,
    /// Print the jobs as JSON lines instead of enqueueing them
    #[arg(long)]
    dry_run: bool,
}

pub fn submit(args: SubmitArgs) -> Result<usize> {
    let rt = crate::pipeline::runtime()?;
    let services = rt.block_on(Services::open(&args.pipeline))?;
    let req = SubmitRequest {
        prefix: args.prefix,
        attrs: args.attrs,
        limit: args.limit,
        resume: args.resume,
        run: args.run,
        rate: args.rate,
    };
    let plan = rt.block_on(ops::plan_submit(&services, &req))?;
    if args.dry_run {
        for j in &plan.jobs {
            println!("{j}");
        }
        return Ok(0);
    }
    let bar = indicatif::ProgressBar::new(plan.jobs.len() as u64).with_style(
        indicatif::ProgressStyle::with_template("{spinner} {pos}/{len} jobs {per_sec} eta {eta} {msg}")
            .expect("template"),
    );
    let done = rt.block_on(ops::enqueue(&services, &plan, &req, &|| bar.inc(1)))?;
    bar.finish_and_clear();
    let topic = services.file.kafka.as_ref().map(|k| k.jobs_topic.as_str()).unwrap_or_default();
    eprintln!(
        "run {}: {} images under {}: {} jobs enqueued on {topic}, {} skipped (outputs exist)",
        plan.run,
        plan.jobs.len(),
        plan.prefix,
        done.sent,
        done.skipped
    );
    println!("{}", plan.run);
    Ok(0)
}

#[derive(Args)]
pub struct StatusArgs {
    /// Pipeline file (the results topic and the output bucket)
    #[arg(long)]
    pipeline: PathBuf,
    /// The run id `glowd submit` printed
    #[arg(long)]
    run: String,
    /// Give up reading the results topic after this long
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

pub fn status(args: StatusArgs) -> Result<usize> {
    let rt = crate::pipeline::runtime()?;
    let services = rt.block_on(Services::open(&args.pipeline))?;
    println!("{}", ops::run_status(&services, &rt, &args.run, args.timeout)?);
    Ok(0)
}

#[derive(Args)]
pub struct DatasetArgs {
    /// Pipeline file (output bucket and prefix, models, [dataset])
    #[arg(long)]
    pipeline: PathBuf,
    /// The run whose encode jobs to collect
    #[arg(long)]
    run: String,
}

/// Collects a run's latents into Parquet shards and `dataset.json` under `<output prefix>/datasets/<run>/`.
pub fn dataset(args: DatasetArgs) -> Result<usize> {
    let rt = crate::pipeline::runtime()?;
    let Services { file, s3 } = rt.block_on(Services::open(&args.pipeline))?;
    let bucket = file.pipeline.output.bucket.clone();
    let root = file.pipeline.output.prefix.as_str();
    let manifests: Vec<String> = rt
        .block_on(list(&s3, &bucket, &join_key(root, &format!("{}-", args.run))))?
        .into_iter()
        .filter(|k| k.ends_with(&format!("/{}", crate::job::MANIFEST_NAME)))
        .collect();
    let mut rows = Vec::new();
    let mut source: Option<crate::tools::dataset::Source> = None;
    for key in &manifests {
        let m: Manifest = serde_json::from_slice(&rt.block_on(get(&s3, &bucket, key, u64::MAX))?).with_context(|| key.clone())?;
        // The listing is by key prefix `<run>-`, which another run's ids may share (`nightly` vs `nightly-2`).
        if m.job.kind() != JobKind::Encode || m.job.run.as_ref().map(JobId::as_str) != Some(args.run.as_str()) {
            continue;
        }
        let this = crate::tools::dataset::Source {
            model: m.model.name.clone(),
            version: m.model.version.clone(),
            // Manifests from before precision was recorded were all fp32.
            precision: m.model.precision.unwrap_or_default(),
        };
        match &source {
            None => source = Some(this),
            Some(first) => crate::tools::dataset::Source::check_same(first, &this, key).map_err(|e| anyhow!(e))?,
        }
        let latents_key = m
            .outputs
            .iter()
            .find(|o| o.media_type == MediaType::OctetStream && o.key.ends_with(".safetensors"))
            .map(|o| o.key.as_str())
            .ok_or_else(|| anyhow!("{key}: no latents among the outputs"))?
            .to_string();
        let latent = crate::tools::dataset::flatten_latents(&rt.block_on(get(&s3, &bucket, &latents_key, u64::MAX))?)
            .map_err(|e| anyhow!("{latents_key}: {e}"))?;
        rows.push(crate::tools::dataset::Row {
            source_key: m.job.inputs().first().map(|u| u.to_string()).unwrap_or_default(),
            job_id: m.job.id.to_string(),
            bits_per_dim: m.bits_per_dim.first().copied().unwrap_or(f64::NAN),
            latent,
        });
    }
    let source = source.ok_or_else(|| anyhow!("run {}: no encode job has finished", args.run))?;
    let (name, version) = (source.model.clone(), source.version.clone());
    let mut directions = Vec::new();
    if file.dataset.attribute_scores {
        let spec = file
            .models
            .iter()
            .find(|m| m.name == name && m.version == version)
            .ok_or_else(|| anyhow!("model {name}@{version} is not in {}", args.pipeline.display()))?;
        let config = crate::model::Glow::read_config(&spec.path)?;
        for (name, values) in crate::model::directions::load_flat(&spec.path, &config)?.unwrap_or_default() {
            directions.push(crate::tools::dataset::Direction { name, values });
        }
    }
    let images = rows.len();
    let files = crate::tools::dataset::build(&args.run, &source, rows, &directions, file.dataset.rows_per_shard)
        .map_err(|e| anyhow!(e))?;
    let dir = join_key(root, &format!("datasets/{}", args.run));
    rt.block_on(async {
        for (file_name, bytes) in &files {
            let content_type = if file_name.ends_with(".json") { "application/json" } else { "application/vnd.apache.parquet" };
            put(&s3, &bucket, &format!("{dir}/{file_name}"), bytes.clone(), content_type).await?;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    eprintln!("dataset of run {}: {images} images in {} shard(s) under s3://{bucket}/{dir}/", args.run, files.len() - 1);
    println!("s3://{bucket}/{dir}/dataset.json");
    Ok(0)
}
