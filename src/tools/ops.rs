//! The S3 and Kafka side of the operator tools: listing and fetching objects, enqueueing a run (`glowd submit`)
//! and reading a run's results (`glowd status`). The commands in `cli::tools` and the studio both call these, so a
//! run submitted from the studio's page is the same run `glowd submit` would enqueue.
use super::status::Tallies;
use super::submit::{self, SubmitSettings};
use crate::job::join_key;
use crate::kafka::client_config;
use crate::s3::S3Store;
use crate::settings::{KafkaSettings, PipelineFile};
use anyhow::{anyhow, bail, Context, Result};
use aws_sdk_s3::primitives::ByteStream;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

/// Deliveries awaited together while submitting: bounded memory, one round trip per group.
const DELIVERY_GROUP: usize = 500;

/// A pipeline file and its object store.
pub struct Services {
    pub file: PipelineFile,
    pub s3: S3Store,
}

impl Services {
    pub async fn open(path: &Path) -> Result<Services> {
        let file = PipelineFile::load(path)?;
        Self::from_file(file, path).await
    }

    pub async fn from_file(file: PipelineFile, path: &Path) -> Result<Services> {
        let s3s = file.s3.clone().ok_or_else(|| anyhow!("{}: needs an [s3] table", path.display()))?;
        let s3 = S3Store::new(&s3s).await;
        Ok(Services { file, s3 })
    }

    /// The key prefix every job's outputs go under.
    pub fn output_root(&self) -> &str {
        &self.file.pipeline.output.prefix
    }

    pub fn output_bucket(&self) -> &str {
        &self.file.pipeline.output.bucket
    }

    /// Where the run record of `run` lives.
    pub fn run_record_key(&self, run: &str) -> String {
        join_key(self.output_root(), &format!("runs/{run}.json"))
    }

    /// The run record `glowd submit` wrote (what was submitted, how many images).
    pub async fn run_record(&self, run: &str) -> Result<Value> {
        let bytes = get(&self.s3, self.output_bucket(), &self.run_record_key(run), u64::MAX).await?;
        serde_json::from_slice(&bytes).context("the run record")
    }

    /// The ids of every run with a record, in key order.
    pub async fn runs(&self) -> Result<Vec<String>> {
        let prefix = join_key(self.output_root(), "runs/");
        Ok(list(&self.s3, self.output_bucket(), &prefix)
            .await?
            .into_iter()
            .filter_map(|k| k.strip_prefix(&prefix).and_then(|r| r.strip_suffix(".json")).map(str::to_string))
            .filter(|r| !r.contains('/'))
            .collect())
    }
}

/// Keys under `prefix` (paginated, in key order).
pub async fn list(s3: &S3Store, bucket: &str, prefix: &str) -> Result<Vec<String>> {
    let mut keys = Vec::new();
    let mut pages = s3.client().list_objects_v2().bucket(bucket).prefix(prefix).into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| anyhow!("listing s3://{bucket}/{prefix}: {}", aws_sdk_s3::error::DisplayErrorContext(e)))?;
        keys.extend(page.contents().iter().filter_map(|o| o.key().map(str::to_string)));
    }
    Ok(keys)
}

/// One level of a "folder" under `prefix` (delimiter `/`): its sub-prefixes and its keys, at most `max` keys.
pub async fn list_folder(s3: &S3Store, bucket: &str, prefix: &str, max: usize) -> Result<(Vec<String>, Vec<String>)> {
    let page = s3
        .client()
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .delimiter("/")
        .max_keys(max.min(1000) as i32)
        .send()
        .await
        .map_err(|e| anyhow!("listing s3://{bucket}/{prefix}: {}", aws_sdk_s3::error::DisplayErrorContext(e)))?;
    let dirs = page.common_prefixes().iter().filter_map(|p| p.prefix().map(str::to_string)).collect();
    let keys = page.contents().iter().filter_map(|o| o.key().map(str::to_string)).collect();
    Ok((dirs, keys))
}

/// One object, refused when bigger than `max_bytes`.
pub async fn get(s3: &S3Store, bucket: &str, key: &str, max_bytes: u64) -> Result<Vec<u8>> {
    use crate::pipeline::store::ObjectStore;
    s3.get(bucket, key, max_bytes).await.map_err(|e| anyhow!("s3://{bucket}/{key}: {e}"))
}

pub async fn put(s3: &S3Store, bucket: &str, key: &str, body: Vec<u8>, content_type: &str) -> Result<()> {
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

/// What to submit: `glowd submit`'s flags.
#[derive(Debug, Clone, Default)]
pub struct SubmitRequest {
    /// `s3://bucket/path/`; default `submit.prefix`.
    pub prefix: Option<String>,
    /// Edit strengths replacing the template's edits.
    pub attrs: Vec<(String, f64)>,
    /// At most this many images, the first in key order.
    pub limit: Option<usize>,
    /// Skip images whose job already wrote its manifest.
    pub resume: bool,
    /// Run id (default: derived from the prefix and the template).
    pub run: Option<String>,
    /// Jobs per second (default `submit.rate_per_second`).
    pub rate: Option<f64>,
}

/// A listed submission: the run id and its jobs, not yet enqueued.
#[derive(Debug, Clone)]
pub struct SubmitPlan {
    pub run: String,
    pub prefix: String,
    pub template: Value,
    pub jobs: Vec<Value>,
}

/// What [`enqueue`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    pub sent: usize,
    pub skipped: usize,
}

/// The pipeline file's `[submit]` table.
pub fn submit_settings(file: &PipelineFile) -> Result<&SubmitSettings> {
    file.submit.as_ref().ok_or_else(|| anyhow!("the pipeline file has no [submit] table"))
}

/// Lists the prefix and builds one job per image (each checked against the job schema).
pub async fn plan_submit(services: &Services, req: &SubmitRequest) -> Result<SubmitPlan> {
    let settings = submit_settings(&services.file)?;
    let template = submit::template(settings, &req.attrs).map_err(|e| anyhow!(e))?;
    let prefix = req.prefix.clone().or(settings.prefix.clone()).ok_or_else(|| anyhow!("give --prefix (or submit.prefix)"))?;
    let (bucket, key_prefix) = prefix
        .strip_prefix("s3://")
        .and_then(|p| p.split_once('/').or(Some((p, ""))))
        .ok_or_else(|| anyhow!("--prefix must look like s3://bucket/path/"))?;
    let run = submit::run_id(req.run.as_deref(), &prefix, &template);
    let mut keys: Vec<String> = list(&services.s3, bucket, key_prefix)
        .await?
        .into_iter()
        .filter(|k| submit::is_image(k, &settings.extensions))
        .collect();
    keys.sort();
    if let Some(n) = req.limit {
        keys.truncate(n);
    }
    let jobs: Vec<Value> = keys
        .iter()
        .map(|k| submit::job(&template, &run, &format!("s3://{bucket}/{k}")))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| anyhow!(e))?;
    Ok(SubmitPlan { run, prefix, template, jobs })
}

/// Enqueues a plan's jobs on the jobs topic (idempotent producer, paced at the rate) and writes the run record;
/// `progress` is called with each job delivered or skipped.
pub async fn enqueue(services: &Services, plan: &SubmitPlan, req: &SubmitRequest, progress: &(dyn Fn() + Sync)) -> Result<Enqueued> {
    let file = &services.file;
    let settings = submit_settings(file)?;
    let kafka = file.kafka.clone().ok_or_else(|| anyhow!("the pipeline file needs a [kafka] table"))?;
    let mut config = client_config(&kafka).map_err(|e| anyhow!(e))?;
    // Idempotent producer: a retried send never duplicates a job in the log (duplicates from resubmitting are
    // still possible and harmless: same ids, create-only outputs).
    config.set("enable.idempotence", "true").set("acks", "all").set("linger.ms", "20");
    let producer: FutureProducer = config.create().context("kafka producer")?;
    let root = services.output_root();
    let out_bucket = services.output_bucket();
    let rate = req.rate.unwrap_or(settings.rate_per_second).max(0.001);
    let (mut sent, mut skipped) = (0usize, 0usize);
    let t0 = Instant::now();
    let mut pending = Vec::new();
    for job in &plan.jobs {
        let id = job["id"].as_str().expect("id").to_string();
        if req.resume {
            let manifest = join_key(root, &format!("{id}/{}", crate::job::MANIFEST_NAME));
            if services.s3.client().head_object().bucket(out_bucket).key(&manifest).send().await.is_ok() {
                skipped += 1;
                progress();
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
        if pending.len() >= DELIVERY_GROUP {
            await_deliveries(&mut pending, progress).await?;
        }
    }
    await_deliveries(&mut pending, progress).await?;
    // The run record: what was submitted, for `glowd status`. Overwritten by a resubmission of the run.
    let record = json!({
        "version": 1, "run": plan.run, "prefix": plan.prefix, "job": plan.template,
        "images": plan.jobs.len(), "enqueued": sent, "skipped_existing": skipped,
    });
    put(&services.s3, out_bucket, &services.run_record_key(&plan.run), serde_json::to_vec_pretty(&record)?, "application/json")
        .await?;
    Ok(Enqueued { sent, skipped })
}

type Delivery = rdkafka::producer::DeliveryFuture;

async fn await_deliveries(pending: &mut Vec<(String, Delivery)>, progress: &(dyn Fn() + Sync)) -> Result<()> {
    for (id, d) in pending.drain(..) {
        d.await
            .map_err(|_| anyhow!("enqueueing {id}: producer dropped"))?
            .map_err(|(e, _)| anyhow!("enqueueing {id}: {e}"))?;
        progress();
    }
    Ok(())
}

/// A consumer of every partition of `topic` from its beginning, outside any consumer group's commits.
pub fn topic_reader(kafka: &KafkaSettings, topic: &str, purpose: &str) -> Result<(BaseConsumer, Vec<i32>)> {
    let mut config = client_config(kafka).map_err(|e| anyhow!(e))?;
    config
        .set("group.id", format!("glowd-{purpose}-{}", std::process::id()))
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
    Ok((consumer, partitions))
}

/// Reads a whole topic from the beginning to its current end, calling `f` with each payload. Blocking.
pub fn read_topic(kafka: &KafkaSettings, topic: &str, timeout: Duration, mut f: impl FnMut(&[u8])) -> Result<()> {
    let (consumer, partitions) = topic_reader(kafka, topic, "status")?;
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

/// `glowd status`: the run's counts from its record and the whole results topic. Blocking (reads Kafka); `rt`
/// runs the S3 call.
pub fn run_status(services: &Services, rt: &tokio::runtime::Runtime, run: &str, timeout: Duration) -> Result<Value> {
    let kafka = services.file.kafka.clone().ok_or_else(|| anyhow!("the pipeline file needs a [kafka] table"))?;
    let record = rt.block_on(services.run_record(run))?;
    let mut tallies = Tallies::default();
    read_topic(&kafka, &kafka.results_topic, timeout, |payload| tallies.add_payload(payload))?;
    let images = record["images"].as_u64().unwrap_or(0) as usize;
    let tally = tallies.runs.remove(run).unwrap_or_default();
    Ok(serde_json::to_value(tally.summary(run, images))?)
}
