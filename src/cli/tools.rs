//! `glowd validate`, `glowd submit`, `glowd status` and `glowd dataset`: the commands around a running daemon.
//! Each takes the pipeline file the daemon runs with, so they agree on topics, buckets and prefixes.
use crate::job::{join_key, JobId, JobKind, JobResult, JobStatus, Manifest, MediaType};
use crate::settings::PipelineFile;
use crate::kafka::client_config;
use crate::s3::S3Store;
use crate::tools::submit::{self, SubmitSettings};
use anyhow::{anyhow, bail, Context, Result};
use aws_sdk_s3::primitives::ByteStream;
use clap::Args;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Deliveries awaited together while submitting: bounded memory, one round trip per group.
const DELIVERY_GROUP: usize = 500;

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

struct Services {
    file: PipelineFile,
    s3: S3Store,
    rt: tokio::runtime::Runtime,
}

fn services(path: &Path) -> Result<Services> {
    let file = PipelineFile::load(path)?;
    let s3s = file.s3.clone().ok_or_else(|| anyhow!("{}: needs an [s3] table", path.display()))?;
    let rt = crate::pipeline::runtime()?;
    let s3 = rt.block_on(S3Store::new(&s3s));
    Ok(Services { file, s3, rt })
}

/// Keys under `prefix` (paginated, in key order).
async fn list(s3: &S3Store, bucket: &str, prefix: &str) -> Result<Vec<String>> {
    let mut keys = Vec::new();
    let mut pages = s3.client().list_objects_v2().bucket(bucket).prefix(prefix).into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| anyhow!("listing s3://{bucket}/{prefix}: {}", aws_sdk_s3::error::DisplayErrorContext(e)))?;
        keys.extend(page.contents().iter().filter_map(|o| o.key().map(str::to_string)));
    }
    Ok(keys)
}

async fn get(s3: &S3Store, bucket: &str, key: &str) -> Result<Vec<u8>> {
    use crate::pipeline::store::ObjectStore;
    s3.get(bucket, key, u64::MAX).await.map_err(|e| anyhow!("s3://{bucket}/{key}: {e}"))
}

async fn put(s3: &S3Store, bucket: &str, key: &str, body: Vec<u8>, content_type: &str) -> Result<()> {
    s3.client()
        .put_object()
        .bucket(bucket)
        .key(key)
        .content_type(content_type)
        .body(ByteStream::from(body))
        .send()
        .await
        .map_err(|e| anyhow!("s3://{bucket}/{key}: {}", aws_sdk_s3::error::DisplayErrorContext(e)))?;
    Ok(())
}

fn output_root(file: &PipelineFile) -> &str {
    &file.pipeline.output.prefix
}

pub fn submit(args: SubmitArgs) -> Result<usize> {
    let Services { file, s3, rt } = services(&args.pipeline)?;
    let settings = file.submit.clone().ok_or_else(|| anyhow!("{}: no [submit] table", args.pipeline.display()))?;
    let template = submit::template(&settings, &args.attrs).map_err(|e| anyhow!(e))?;
    let prefix = args.prefix.clone().or(settings.prefix.clone()).ok_or_else(|| anyhow!("give --prefix (or submit.prefix)"))?;
    let (bucket, key_prefix) = prefix
        .strip_prefix("s3://")
        .and_then(|p| p.split_once('/').or(Some((p, ""))))
        .ok_or_else(|| anyhow!("--prefix must look like s3://bucket/path/"))?;
    let run = submit::run_id(args.run.as_deref(), &prefix, &template);
    let mut keys: Vec<String> =
        rt.block_on(list(&s3, bucket, key_prefix))?.into_iter().filter(|k| submit::is_image(k, &settings.extensions)).collect();
    keys.sort();
    if let Some(n) = args.limit {
        keys.truncate(n);
    }
    let jobs: Vec<Value> = keys
        .iter()
        .map(|k| submit::job(&template, &run, &format!("s3://{bucket}/{k}")))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| anyhow!(e))?;
    if args.dry_run {
        for j in &jobs {
            println!("{j}");
        }
        return Ok(0);
    }
    let kafka = file.kafka.clone().ok_or_else(|| anyhow!("{}: needs a [kafka] table", args.pipeline.display()))?;
    let mut config = client_config(&kafka).map_err(|e| anyhow!(e))?;
    // Idempotent producer: a retried send never duplicates a job in the log (duplicates from resubmitting are
    // still possible and harmless: same ids, create-only outputs).
    config.set("enable.idempotence", "true").set("acks", "all").set("linger.ms", "20");
    let producer: FutureProducer = config.create().context("kafka producer")?;
    let root = output_root(&file);
    let out_bucket = file.pipeline.output.bucket.clone();
    let rate = args.rate.unwrap_or(settings.rate_per_second).max(0.001);
    let bar = indicatif::ProgressBar::new(jobs.len() as u64).with_style(
        indicatif::ProgressStyle::with_template("{spinner} {pos}/{len} jobs {per_sec} eta {eta} {msg}")
            .expect("template"),
    );
    let (mut sent, mut skipped) = (0usize, 0usize);
    let t0 = Instant::now();
    rt.block_on(async {
        let mut pending = Vec::new();
        for job in &jobs {
            let id = job["id"].as_str().expect("id").to_string();
            if args.resume {
                let manifest = join_key(root, &format!("{id}/{}", crate::job::MANIFEST_NAME));
                if s3.client().head_object().bucket(&out_bucket).key(&manifest).send().await.is_ok() {
                    skipped += 1;
                    bar.inc(1);
                    continue;
                }
            }
            let due = t0 + Duration::from_secs_f64(sent as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
            let payload = job.to_string();
            let delivery = producer
                .send_result(FutureRecord::to(&kafka.jobs_topic).key(&id).payload(&payload))
                .map_err(|(e, _)| anyhow!("enqueueing {id}: {e}"))?;
            pending.push((id, delivery));
            sent += 1;
            // Await deliveries in groups: bounded memory, one round trip per group.
            if pending.len() >= DELIVERY_GROUP {
                await_deliveries(&mut pending, &bar).await?;
            }
        }
        await_deliveries(&mut pending, &bar).await?;
        // The run record: what was submitted, for `glowd status`. Overwritten by a resubmission of the run.
        let record = json!({
            "version": 1, "run": run, "prefix": prefix, "job": template,
            "images": jobs.len(), "enqueued": sent, "skipped_existing": skipped,
        });
        put(&s3, &out_bucket, &join_key(root, &format!("runs/{run}.json")), serde_json::to_vec_pretty(&record)?, "application/json")
            .await
    })?;
    bar.finish_and_clear();
    eprintln!(
        "run {run}: {} images under {prefix}: {sent} jobs enqueued on {}, {skipped} skipped (outputs exist)",
        jobs.len(),
        kafka.jobs_topic
    );
    println!("{run}");
    Ok(0)
}

type Delivery = rdkafka::producer::DeliveryFuture;

async fn await_deliveries(pending: &mut Vec<(String, Delivery)>, bar: &indicatif::ProgressBar) -> Result<()> {
    for (id, d) in pending.drain(..) {
        d.await
            .map_err(|_| anyhow!("enqueueing {id}: producer dropped"))?
            .map_err(|(e, _)| anyhow!("enqueueing {id}: {e}"))?;
        bar.inc(1);
    }
    Ok(())
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

/// Reads a whole topic from the beginning to its current end, calling `f` with each payload.
fn read_topic(kafka: &crate::settings::KafkaSettings, topic: &str, timeout: Duration, mut f: impl FnMut(&[u8])) -> Result<()> {
    let mut config = client_config(kafka).map_err(|e| anyhow!(e))?;
    config
        .set("group.id", format!("glowd-status-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true");
    let consumer: BaseConsumer = config.create().context("kafka consumer")?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).context("topic metadata")?;
    let partitions: Vec<i32> =
        metadata.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(topic, *p, Offset::Beginning).map_err(|e| anyhow!("{e}"))?;
    }
    consumer.assign(&tpl).context("assign")?;
    let mut at_end = BTreeSet::new();
    let t0 = Instant::now();
    while at_end.len() < partitions.len() {
        if t0.elapsed() > timeout {
            bail!("{topic}: not read to its end within {timeout:?}");
        }
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => f(m.payload().unwrap_or_default()),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => bail!("{topic}: {e}"),
            None => {}
        }
    }
    Ok(())
}

pub fn status(args: StatusArgs) -> Result<usize> {
    let Services { file, s3, rt } = services(&args.pipeline)?;
    let kafka = file.kafka.clone().ok_or_else(|| anyhow!("{}: needs a [kafka] table", args.pipeline.display()))?;
    let record_key = join_key(output_root(&file), &format!("runs/{}.json", args.run));
    let record: Value = serde_json::from_slice(&rt.block_on(get(&s3, &file.pipeline.output.bucket, &record_key))?)
        .context("the run record")?;
    // Latest status per job of the run (a redelivered job reports again; `done` wins over an earlier failure).
    let mut latest: BTreeMap<JobId, JobStatus> = BTreeMap::new();
    read_topic(&kafka, &kafka.results_topic, args.timeout, |payload| {
        // Records of other versions or shapes are not this run's to count.
        let Ok(r) = serde_json::from_slice::<JobResult>(payload) else { return };
        if r.run.as_ref().map(JobId::as_str) != Some(args.run.as_str()) {
            return;
        }
        let Some(job) = r.job else { return };
        latest
            .entry(job)
            .and_modify(|s| {
                if *s != JobStatus::Done {
                    *s = r.status;
                }
            })
            .or_insert(r.status);
    })?;
    let count = |s: JobStatus| latest.values().filter(|v| **v == s).count();
    let images = record["images"].as_u64().unwrap_or(0) as usize;
    let summary = json!({
        "run": args.run,
        "images": images,
        "done": count(JobStatus::Done),
        "dead_lettered": count(JobStatus::DeadLettered),
        "skipped": count(JobStatus::Skipped),
        "pending": images.saturating_sub(latest.len()),
    });
    println!("{summary}");
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
    let Services { file, s3, rt } = services(&args.pipeline)?;
    let bucket = file.pipeline.output.bucket.clone();
    let root = output_root(&file);
    let manifests: Vec<String> = rt
        .block_on(list(&s3, &bucket, &join_key(root, &format!("{}-", args.run))))?
        .into_iter()
        .filter(|k| k.ends_with(&format!("/{}", crate::job::MANIFEST_NAME)))
        .collect();
    let mut rows = Vec::new();
    let mut model: Option<(String, String)> = None;
    for key in &manifests {
        let m: Manifest = serde_json::from_slice(&rt.block_on(get(&s3, &bucket, key))?).with_context(|| key.clone())?;
        // The listing is by key prefix `<run>-`, which another run's ids may share (`nightly` vs `nightly-2`).
        if m.job.kind() != JobKind::Encode || m.job.run.as_ref().map(JobId::as_str) != Some(args.run.as_str()) {
            continue;
        }
        let this = (m.model.name.clone(), m.model.version.clone());
        match &model {
            None => model = Some(this.clone()),
            Some(first) if *first != this => bail!("{key}: model {}@{}, the run's first is {}@{}", this.0, this.1, first.0, first.1),
            _ => {}
        }
        let latents_key = m
            .outputs
            .iter()
            .find(|o| o.media_type == MediaType::OctetStream && o.key.ends_with(".safetensors"))
            .map(|o| o.key.as_str())
            .ok_or_else(|| anyhow!("{key}: no latents among the outputs"))?
            .to_string();
        let latent = crate::tools::dataset::flatten_latents(&rt.block_on(get(&s3, &bucket, &latents_key))?)
            .map_err(|e| anyhow!("{latents_key}: {e}"))?;
        rows.push(crate::tools::dataset::Row {
            source_key: m.job.inputs().first().map(|u| u.to_string()).unwrap_or_default(),
            job_id: m.job.id.to_string(),
            bits_per_dim: m.bits_per_dim.first().copied().unwrap_or(f64::NAN),
            latent,
        });
    }
    let (name, version) = model.ok_or_else(|| anyhow!("run {}: no encode job has finished", args.run))?;
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
    let files = crate::tools::dataset::build(&args.run, (&name, &version), rows, &directions, file.dataset.rows_per_shard)
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
