//! The pipeline core: job messages in, outputs + manifest + result out, or one dead letter per bad job.
//!
//! ```text
//! Envelope ─▶ parse + validate ─▶ fetch inputs ─▶ decode ─▶ model queue ─▶ batcher ─▶ device worker
//!  (payload,    (job::JobParser,     (bounded,       (limits,   (per model)   (pull)     (one OS thread
//!   source,      the model's          retried)        allow-                                per device)
//!   ack)         attributes/levels)                   list)                                     │
//!     ▲                                                                                          ▼
//!     └── ack ◀── result record ◀── manifest (last) ◀── outputs (create-only, retried) ◀── encode outputs
//! ```
//!
//! The same core runs the embedded mode (a JSON-lines file, a local folder for inputs and outputs, JSON-lines
//! results and dead letters: [`embedded`]) and the daemon (Kafka, S3, topics: [`crate::daemon`]). It names no tch
//! type: the device is behind [`crate::worker`], which takes and returns plain data.
//!
//! Each job's [`Envelope`] carries an `ack` callback that runs exactly once, after the job's outputs and result are
//! durable or its dead letter is; a job abandoned at shutdown is never acknowledged (it is redelivered). In-flight
//! jobs are bounded by a semaphore taken *before* the next envelope is, so a full pipeline stops taking work.
pub mod batcher;
pub mod decode;
pub mod embedded;
pub mod error;
pub mod output;
pub mod report;
pub mod settings;
pub mod store;

pub use error::StageError;
pub use report::{DeadLetter, JsonlReporter, Reporter};
pub use settings::PipelineSettings;
pub use store::{LocalStore, ObjectStore, PutOutcome, StoreError};

use crate::imageio::Pixels;
use crate::job::{
    self, AllowedPrefix, Disposition, Job, JobFailure, JobId, JobParser, JobResult, JobSpec, JobStatus, Manifest,
    MediaType, ModelProvenance, OutputEntry, SourcePosition, Stage, Timings,
};
use crate::worker::{BatchItem, DeviceOp, DeviceOutput, DeviceWorker, ModelInfo};
use batcher::ModelQueue;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Called once when a job is finished (done or dead-lettered, and reported).
pub type Ack = Box<dyn FnOnce() + Send>;

/// One job message and where it came from.
pub struct Envelope {
    pub payload: Vec<u8>,
    /// Topic, partition and offset (the embedded mode uses the jobs file's name, partition 0, the line number).
    pub source: Option<SourcePosition>,
    pub ack: Option<Ack>,
    /// When the source handed it over (for `queued_seconds`).
    pub received: Instant,
    /// The job message's W3C `traceparent` header, carried to its log span and its dead letter.
    pub traceparent: Option<String>,
}

impl Envelope {
    pub fn new(payload: Vec<u8>, source: Option<SourcePosition>, ack: Option<Ack>) -> Self {
        Envelope { payload, source, ack, received: Instant::now(), traceparent: None }
    }

    /// Keeps `value` as the trace context when it has the W3C shape (`00-<32 hex>-<16 hex>-<2 hex>`); anything
    /// else is dropped rather than passed on.
    pub fn with_traceparent(mut self, value: Option<&[u8]>) -> Self {
        self.traceparent = value.and_then(|v| std::str::from_utf8(v).ok()).filter(|v| is_traceparent(v)).map(str::to_string);
        self
    }
}

fn is_traceparent(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    parts.len() == 4 && hex(parts[0], 2) && hex(parts[1], 32) && hex(parts[2], 16) && hex(parts[3], 2)
}

/// Where a job's message came from: its position and its trace context.
#[derive(Clone, Copy)]
struct Origin<'a> {
    source: Option<&'a SourcePosition>,
    traceparent: Option<&'a str>,
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    DeadLettered,
    /// Stopped by shutdown or a fatal error before finishing: not acknowledged.
    Abandoned,
}

/// Counts of one run.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RunSummary {
    pub jobs: u64,
    pub done: u64,
    pub dead_lettered: u64,
    pub abandoned: u64,
}

#[derive(Default)]
struct Counters {
    jobs: AtomicU64,
    done: AtomicU64,
    dead: AtomicU64,
    abandoned: AtomicU64,
}

/// The running core. Build with [`Pipeline::new`] inside a tokio runtime, feed with [`Pipeline::run`].
pub struct Pipeline {
    settings: PipelineSettings,
    parser: JobParser,
    /// Per model (the workers' model order): what it is, and its queue.
    models: Vec<(ModelInfo, ModelQueue)>,
    inputs: Arc<dyn ObjectStore>,
    outputs: Arc<dyn ObjectStore>,
    reporter: Arc<dyn Reporter>,
    fetch_permits: Arc<Semaphore>,
    /// In KiB, so the permit count fits tokio's u32 `acquire_many`.
    byte_permits: Arc<Semaphore>,
    put_permits: Arc<Semaphore>,
    /// Cancelled to abandon work in flight (after the drain deadline, or on a fatal error).
    abandon: CancellationToken,
    /// Cancelled to stop taking new jobs.
    intake: CancellationToken,
    fatal: Mutex<Option<StageError>>,
    counters: Counters,
}

/// A stage gave up because the job is being abandoned.
const ABANDONED: &str = "abandoned";

impl Pipeline {
    /// Checks the settings, starts a batcher per (model, worker). Every worker must hold the same models in the
    /// same order. `allowed_inputs`: the bucket/prefix pairs inputs may come from (`None`: any well-formed key).
    pub fn new(
        settings: PipelineSettings,
        workers: &[DeviceWorker],
        inputs: Arc<dyn ObjectStore>,
        outputs: Arc<dyn ObjectStore>,
        reporter: Arc<dyn Reporter>,
        allowed_inputs: Option<Vec<AllowedPrefix>>,
    ) -> Result<Arc<Pipeline>, String> {
        settings.check()?;
        let first = workers.first().ok_or("no device worker")?;
        if workers.iter().any(|w| w.models != first.models) {
            return Err("every device worker must hold the same models".into());
        }
        let mut parser = JobParser::new(settings.jobs.clone()).map_err(|e| e.to_string())?;
        if let Some(allowed) = allowed_inputs {
            parser = parser.confine_inputs(allowed);
        }
        let mut models = Vec::new();
        for (i, info) in first.models.iter().enumerate() {
            let queue = ModelQueue::new(settings.limits.max_in_flight_jobs);
            for w in workers {
                queue.spawn_batcher(i, w.clone(), settings.batching.max_batch);
            }
            models.push((info.clone(), queue));
        }
        let kib = settings.limits.max_in_flight_bytes.div_ceil(1024).clamp(1, u32::MAX as u64) as usize;
        Ok(Arc::new(Pipeline {
            fetch_permits: Arc::new(Semaphore::new(settings.limits.fetch_concurrency)),
            byte_permits: Arc::new(Semaphore::new(kib)),
            put_permits: Arc::new(Semaphore::new(settings.limits.put_concurrency)),
            settings,
            parser,
            models,
            inputs,
            outputs,
            reporter,
            abandon: CancellationToken::new(),
            intake: CancellationToken::new(),
            fatal: Mutex::new(None),
            counters: Counters::default(),
        }))
    }

    pub fn settings(&self) -> &PipelineSettings {
        &self.settings
    }

    pub fn models(&self) -> Vec<ModelInfo> {
        self.models.iter().map(|(m, _)| m.clone()).collect()
    }

    pub fn summary(&self) -> RunSummary {
        let c = &self.counters;
        RunSummary {
            jobs: c.jobs.load(Ordering::Relaxed),
            done: c.done.load(Ordering::Relaxed),
            dead_lettered: c.dead.load(Ordering::Relaxed),
            abandoned: c.abandoned.load(Ordering::Relaxed),
        }
    }

    /// The first fatal error, if one stopped the pipeline.
    pub fn fatal_error(&self) -> Option<StageError> {
        self.fatal.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Takes envelopes until `jobs` closes or `stop` is cancelled (SIGTERM), running up to `max_in_flight_jobs` at
    /// once; then drains for at most `drain_timeout_seconds` and abandons what is left. Returns the counts, or the
    /// fatal error that stopped it.
    pub async fn run(
        self: &Arc<Self>,
        mut jobs: mpsc::Receiver<Envelope>,
        stop: CancellationToken,
    ) -> Result<RunSummary, StageError> {
        let in_flight = Arc::new(Semaphore::new(self.settings.limits.max_in_flight_jobs));
        let tracker = TaskTracker::new();
        loop {
            let permit = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = self.intake.cancelled() => break,
                p = in_flight.clone().acquire_owned() => p.expect("never closed"),
            };
            let envelope = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = self.intake.cancelled() => break,
                e = jobs.recv() => match e {
                    Some(e) => e,
                    None => break,
                },
            };
            metrics::gauge!("glowd_jobs_in_flight").increment(1.0);
            let this = self.clone();
            tracker.spawn(async move {
                this.handle(envelope).await;
                metrics::gauge!("glowd_jobs_in_flight").decrement(1.0);
                drop(permit);
            });
        }
        tracker.close();
        let deadline = Duration::from_secs_f64(self.settings.limits.drain_timeout_seconds);
        if tokio::time::timeout(deadline, tracker.wait()).await.is_err() {
            tracing::warn!(left = tracker.len(), "drain deadline passed: abandoning the jobs still in flight");
            self.abandon.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
        }
        match self.fatal_error() {
            Some(e) => Err(e),
            None => Ok(self.summary()),
        }
    }

    async fn handle(&self, envelope: Envelope) {
        self.counters.jobs.fetch_add(1, Ordering::Relaxed);
        let Envelope { payload, source, ack, received, traceparent } = envelope;
        let outcome = self.process(&payload, source.as_ref(), received, traceparent.as_deref()).await;
        match outcome {
            Outcome::Done => {
                self.counters.done.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::DeadLettered => {
                self.counters.dead.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Abandoned => {
                self.counters.abandoned.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        if let Some(ack) = ack {
            ack();
        }
    }

    fn set_fatal(&self, e: StageError) {
        tracing::error!(kind = e.kind, stage = ?e.stage, error = %e.message, "fatal: the pipeline stops");
        let mut f = self.fatal.lock().unwrap_or_else(|p| p.into_inner());
        f.get_or_insert(e);
        self.intake.cancel();
        self.abandon.cancel();
    }

    async fn process(
        &self,
        payload: &[u8],
        source: Option<&SourcePosition>,
        received: Instant,
        traceparent: Option<&str>,
    ) -> Outcome {
        let started = Instant::now();
        let mut timings =
            Timings { queued_seconds: Some(started.duration_since(received).as_secs_f64()), ..Timings::default() };
        let job = match self.parser.parse(payload) {
            Ok(job) => job,
            Err(e) => {
                let id = job::peek_id(payload, self.settings.jobs.max_payload_bytes);
                let failure = StageError::from(&e);
                let at = Origin { source, traceparent };
                return self.dead_letter(payload, id.as_ref(), None, &failure, at, 1, timings).await;
            }
        };
        let span = tracing::info_span!("job", id = %job.id, kind = %job.kind(),
            topic = source.map(|s| s.topic.as_str()).unwrap_or(""),
            partition = source.map(|s| s.partition).unwrap_or(-1),
            offset = source.map(|s| s.offset).unwrap_or(-1), traceparent = traceparent.unwrap_or(""));
        let result = tracing::Instrument::instrument(self.run_job(&job, &mut timings), span.clone()).await;
        timings.total_seconds = Some(started.elapsed().as_secs_f64());
        metrics::histogram!("glowd_job_seconds", "kind" => job.kind().as_str()).record(started.elapsed().as_secs_f64());
        match result {
            Ok((outputs, bits_per_dim, skipped)) => {
                let over = self.settings.gate.over(&bits_per_dim);
                let mut record = JobResult::done(&job, outputs, bits_per_dim, timings);
                record.source = source.cloned();
                let outcome = if let Some(reason) = skipped {
                    tracing::info!(parent: &span, %reason, "skipped");
                    record.status = JobStatus::Skipped;
                    record.skip_reason = Some("likelihood_gate".into());
                    "skipped"
                } else {
                    if over.is_some() {
                        record.flags.push("over_likelihood_gate".into());
                    }
                    "done"
                };
                match self.report(|| self.reporter.result(&record), Stage::Report).await {
                    Ok(()) => {
                        metrics::counter!("glowd_jobs_total", "kind" => job.kind().as_str(), "outcome" => outcome)
                            .increment(1);
                        tracing::info!(parent: &span, "{outcome}");
                        Outcome::Done
                    }
                    Err(e) if e.kind == ABANDONED => Outcome::Abandoned,
                    Err(e) => {
                        self.set_fatal(e);
                        Outcome::Abandoned
                    }
                }
            }
            Err((e, _)) if e.kind == ABANDONED => Outcome::Abandoned,
            Err((e, _)) if e.disposition == Disposition::Fatal => {
                self.set_fatal(e);
                Outcome::Abandoned
            }
            Err((e, attempts)) => {
                let at = Origin { source, traceparent };
                self.dead_letter(payload, Some(&job.id), Some(&job), &e, at, attempts, timings).await
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn dead_letter(
        &self,
        payload: &[u8],
        id: Option<&JobId>,
        job: Option<&Job>,
        e: &StageError,
        at: Origin<'_>,
        attempts: u32,
        timings: Timings,
    ) -> Outcome {
        let source = at.source;
        tracing::warn!(job = id.map(|i| i.as_str()).unwrap_or("-"), kind = e.kind, stage = ?e.stage,
            topic = source.map(|s| s.topic.as_str()).unwrap_or(""), partition = source.map(|s| s.partition).unwrap_or(-1),
            offset = source.map(|s| s.offset).unwrap_or(-1), error = %e.message, "dead-lettered");
        let failure: JobFailure = e.failure();
        let letter = DeadLetter {
            payload: payload.to_vec(),
            job: id.cloned(),
            error: failure.clone(),
            source: source.cloned(),
            attempts,
            traceparent: at.traceparent.map(str::to_string),
        };
        let record = JobResult {
            version: job::report::V1,
            job: id.cloned(),
            run: job.and_then(|j| j.run.clone()),
            kind: job.map(|j| j.kind()),
            model: job.map(|j| j.model.clone()),
            status: JobStatus::DeadLettered,
            source: source.cloned(),
            outputs: vec![],
            bits_per_dim: vec![],
            timings,
            error: Some(failure),
            skip_reason: None,
            flags: vec![],
        };
        // The dead letter first: the job counts as handled once it is durable there.
        let reported = async {
            self.report(|| self.reporter.dead_letter(&letter), Stage::Report).await?;
            self.report(|| self.reporter.result(&record), Stage::Report).await
        }
        .await;
        match reported {
            Ok(()) => {
                let kind = job.map(|j| j.kind().as_str()).unwrap_or("unknown");
                metrics::counter!("glowd_jobs_total", "kind" => kind, "outcome" => "dead_lettered").increment(1);
                metrics::counter!("glowd_dead_letters_total", "reason" => e.kind).increment(1);
                Outcome::DeadLettered
            }
            Err(err) if err.kind == ABANDONED => Outcome::Abandoned,
            Err(err) => {
                self.set_fatal(err);
                Outcome::Abandoned
            }
        }
    }

    /// Reporting is retried until it works or the job is abandoned: a job is not finished until it is reported,
    /// and giving up would mean dead-lettering through the very sink that fails.
    async fn report<'a, F>(&'a self, mut f: impl FnMut() -> F, stage: Stage) -> Result<(), StageError>
    where
        F: std::future::Future<Output = Result<(), report::ReportError>> + 'a,
    {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match f().await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(attempt, error = %e, "reporting failed, retrying");
                    metrics::counter!("glowd_retries_total", "stage" => "report").increment(1);
                    let wait = self.settings.retry.backoff(attempt);
                    tokio::select! {
                        _ = self.abandon.cancelled() => return Err(StageError::retry(ABANDONED, stage, "shutdown")),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    /// Runs `f` until it succeeds, fails for good, or fails transiently for longer than the retry budget (then
    /// `retries_exhausted`). Returns the error with the number of attempts.
    async fn retrying<'a, T, F>(&'a self, mut f: impl FnMut() -> F) -> Result<T, (StageError, u32)>
    where
        F: std::future::Future<Output = Result<T, StageError>> + 'a,
    {
        let start = Instant::now();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let e = match f().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if e.disposition != Disposition::Retry || e.kind == ABANDONED {
                return Err((e, attempt));
            }
            if start.elapsed() >= self.settings.retry.budget() {
                let message = format!(
                    "gave up after {attempt} attempts over {:.1} s: {}",
                    start.elapsed().as_secs_f64(),
                    e.message
                );
                return Err((StageError::dead("retries_exhausted", e.stage, message), attempt));
            }
            let stage = format!("{:?}", e.stage).to_lowercase();
            metrics::counter!("glowd_retries_total", "stage" => stage).increment(1);
            tracing::warn!(attempt, kind = e.kind, error = %e.message, "transient failure, retrying");
            let wait = self.settings.retry.backoff(attempt);
            tokio::select! {
                _ = self.abandon.cancelled() => return Err((StageError::retry(ABANDONED, e.stage, "shutdown"), attempt)),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn stage_time(timing: &mut Option<f64>, since: Instant, stage: &'static str) {
        let s = since.elapsed().as_secs_f64();
        *timing = Some(timing.unwrap_or(0.0) + s);
        metrics::histogram!("glowd_stage_seconds", "stage" => stage).record(s);
    }

    /// Everything after parsing: returns the keys written and the bits/dim, or the error and attempts made.
    /// Runs a job to its written outputs: (keys, bits/dim, why it was skipped instead, if it was).
    async fn run_job(
        &self,
        job: &Job,
        timings: &mut Timings,
    ) -> Result<(Vec<String>, Vec<f64>, Option<String>), (StageError, u32)> {
        let (model_index, info) = self.model_for(job).map_err(|e| (e, 1))?;
        let prepared = prepare(job, info).map_err(|e| (e, 1))?;
        // Fetch and decode the inputs.
        let t = Instant::now();
        let mut blobs = Vec::new();
        for uri in job.inputs() {
            let bytes = self.retrying(|| self.fetch(&uri.bucket, &uri.key)).await?;
            blobs.push((uri.to_string(), bytes));
        }
        Self::stage_time(&mut timings.fetch_seconds, t, "fetch");
        let total: usize = blobs.iter().map(|(_, b)| b.len()).sum();
        let kib = (total.div_ceil(1024) as u64).clamp(1, self.settings.limits.max_in_flight_bytes.div_ceil(1024).max(1))
            as u32;
        let _bytes = tokio::select! {
            _ = self.abandon.cancelled() => return Err((StageError::retry(ABANDONED, Stage::Fetch, "shutdown"), 1)),
            p = self.byte_permits.clone().acquire_many_owned(kib) => p.expect("never closed"),
        };
        let t = Instant::now();
        let images = {
            let settings = self.settings.images.clone();
            let (channels, size) = (info.channels, info.image_size);
            tokio::task::spawn_blocking(move || {
                blobs
                    .iter()
                    .map(|(label, bytes)| decode::decode_image(bytes, &settings, channels, size, label))
                    .collect::<Result<Vec<Pixels>, StageError>>()
            })
            .await
            .map_err(|e| (StageError::retry("decode_panic", Stage::Decode, e.to_string()), 1))?
            .map_err(|e| (e, 1))?
        };
        Self::stage_time(&mut timings.decode_seconds, t, "decode");
        // The device.
        let t = Instant::now();
        let op = prepared.op(images);
        let output = self.retrying(|| self.on_device(model_index, op.clone())).await?;
        Self::stage_time(&mut timings.device_seconds, t, "device");
        if self.settings.gate.action == settings::GateAction::Skip {
            if let Some(reason) = self.settings.gate.over(&output.bits_per_dim) {
                return Ok((vec![], output.bits_per_dim.clone(), Some(reason)));
            }
        }
        // Encode the outputs.
        let t = Instant::now();
        let names = job.output_names();
        let encoded = {
            let job = job.clone();
            let output = output.clone();
            tokio::task::spawn_blocking(move || encode_outputs(&job, &output))
                .await
                .map_err(|e| (StageError::retry("encode_panic", Stage::Encode, e.to_string()), 1))?
                .map_err(|e| (e, 1))?
        };
        if encoded.len() != names.len() {
            let m = format!("{} outputs encoded for {} names", encoded.len(), names.len());
            return Err((StageError::fatal("internal", Stage::Encode, m), 1));
        }
        Self::stage_time(&mut timings.encode_seconds, t, "encode");
        // Write: every output, then the manifest last.
        let t = Instant::now();
        let prefix = job::output_prefix(&self.settings.output.prefix, job);
        let bucket = self.settings.output.bucket.as_str();
        let writes = names.iter().zip(encoded).map(|(name, (bytes, media))| {
            let key = format!("{prefix}{name}");
            async move {
                let stored = self.retrying(|| self.put(bucket, &key, bytes.clone(), media)).await?;
                Ok::<OutputEntry, (StageError, u32)>(OutputEntry::of(key.clone(), media, &stored))
            }
        });
        let entries: Vec<OutputEntry> = futures_join_all(writes).await?;
        let manifest = Manifest {
            version: job::report::V1,
            job: job.clone(),
            model: ModelProvenance {
                name: info.name.clone(),
                version: info.version.clone(),
                fingerprint: Some(info.fingerprint.clone()),
            },
            outputs: entries,
            bits_per_dim: output.bits_per_dim.clone(),
        };
        let mut manifest_bytes = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| (StageError::fatal("internal", Stage::Encode, e.to_string()), 1))?;
        manifest_bytes.push(b'\n');
        let manifest_key = format!("{prefix}{}", job::MANIFEST_NAME);
        self.retrying(|| self.put_manifest(bucket, &manifest_key, manifest_bytes.clone())).await?;
        Self::stage_time(&mut timings.put_seconds, t, "put");
        let mut keys: Vec<String> = manifest.outputs.iter().map(|o| o.key.clone()).collect();
        keys.push(manifest_key);
        Ok((keys, output.bits_per_dim, None))
    }

    fn model_for(&self, job: &Job) -> Result<(usize, &ModelInfo), StageError> {
        let found = self.models.iter().position(|(m, _)| m.name == job.model.name && m.version == job.model.version);
        match found {
            Some(i) => Ok((i, &self.models[i].0)),
            None => {
                let known: Vec<String> = self.models.iter().map(|(m, _)| format!("{} {}", m.name, m.version)).collect();
                Err(StageError::dead(
                    "unknown_model",
                    Stage::Parse,
                    format!(
                        "model {} version {} is not served here (models: {})",
                        job::quote(&job.model.name),
                        job::quote(&job.model.version),
                        known.join(", ")
                    ),
                ))
            }
        }
    }

    async fn fetch(&self, bucket: &str, key: &str) -> Result<Vec<u8>, StageError> {
        let _permit = tokio::select! {
            _ = self.abandon.cancelled() => return Err(StageError::retry(ABANDONED, Stage::Fetch, "shutdown")),
            p = self.fetch_permits.acquire() => p.expect("never closed"),
        };
        let uri = format!("s3://{bucket}/{key}");
        let max = self.settings.images.max_input_bytes;
        match self.inputs.get(bucket, key, max).await {
            Ok(bytes) => Ok(bytes),
            Err(StoreError::NotFound) => {
                Err(StageError::dead("missing_object", Stage::Fetch, format!("{uri}: no such object")))
            }
            Err(e @ StoreError::TooLarge { .. }) => {
                Err(StageError::dead("input_too_large", Stage::Fetch, format!("{uri}: {e}")))
            }
            Err(StoreError::Denied(m)) => Err(StageError::dead("access_denied", Stage::Fetch, format!("{uri}: {m}"))),
            Err(StoreError::Transient(m)) => Err(StageError::retry("fetch_error", Stage::Fetch, format!("{uri}: {m}"))),
        }
    }

    async fn on_device(&self, model: usize, op: DeviceOp) -> Result<DeviceOutput, StageError> {
        let (reply, rx) = oneshot::channel();
        let queue = &self.models[model].1;
        tokio::select! {
            _ = self.abandon.cancelled() => return Err(StageError::retry(ABANDONED, Stage::Batch, "shutdown")),
            sent = queue.tx.send(BatchItem { op, reply }) => {
                sent.map_err(|_| StageError::fatal("device_stopped", Stage::Batch, "the model's batcher is gone"))?
            }
        }
        tokio::select! {
            _ = self.abandon.cancelled() => Err(StageError::retry(ABANDONED, Stage::Device, "shutdown")),
            r = rx => match r {
                Ok(r) => r.map_err(StageError::from),
                Err(_) => Err(StageError::fatal("device_stopped", Stage::Device, "the device worker dropped the job")),
            },
        }
    }

    /// A create-only write. When the key exists already (a redelivered job), the stored bytes are read back, so the
    /// manifest describes what is stored; they should equal ours (outputs are deterministic) and a difference is
    /// logged and counted.
    async fn put(&self, bucket: &str, key: &str, bytes: Vec<u8>, media: MediaType) -> Result<Vec<u8>, StageError> {
        let _permit = tokio::select! {
            _ = self.abandon.cancelled() => return Err(StageError::retry(ABANDONED, Stage::Put, "shutdown")),
            p = self.put_permits.acquire() => p.expect("never closed"),
        };
        let content_type = content_type(media);
        match self.outputs.put_if_absent(bucket, key, bytes.clone(), content_type).await {
            Ok(PutOutcome::Created) => Ok(bytes),
            Ok(PutOutcome::AlreadyExists) => {
                metrics::counter!("glowd_outputs_existing_total").increment(1);
                match self.outputs.get(bucket, key, u64::MAX).await {
                    Ok(stored) => {
                        if stored != bytes {
                            metrics::counter!("glowd_outputs_differing_total").increment(1);
                            tracing::warn!(
                                key,
                                "an existing output differs from the recomputed one; the manifest lists the stored one"
                            );
                        }
                        Ok(stored)
                    }
                    Err(StoreError::Transient(m)) => {
                        Err(StageError::retry("put_error", Stage::Put, format!("{key}: {m}")))
                    }
                    Err(e) => Err(StageError::retry(
                        "put_error",
                        Stage::Put,
                        format!("{key}: reading back the existing object: {e}"),
                    )),
                }
            }
            Err(StoreError::Denied(m)) => Err(StageError::fatal("access_denied", Stage::Put, format!("{key}: {m}"))),
            Err(e) => Err(StageError::retry("put_error", Stage::Put, format!("{key}: {e}"))),
        }
    }

    async fn put_manifest(&self, bucket: &str, key: &str, bytes: Vec<u8>) -> Result<(), StageError> {
        match self.outputs.put_if_absent(bucket, key, bytes, "application/json").await {
            Ok(_) => Ok(()),
            Err(StoreError::Denied(m)) => Err(StageError::fatal("access_denied", Stage::Put, format!("{key}: {m}"))),
            Err(e) => Err(StageError::retry("put_error", Stage::Put, format!("{key}: {e}"))),
        }
    }

    /// Stops taking new jobs (the jobs in flight go on).
    pub fn stop_intake(&self) {
        self.intake.cancel();
    }
}

fn content_type(media: MediaType) -> &'static str {
    match media {
        MediaType::Png => "image/png",
        MediaType::Webp => "image/webp",
        MediaType::Gif => "image/gif",
        MediaType::OctetStream => "application/octet-stream",
    }
}

/// Awaits futures concurrently, in order; the first error wins.
async fn futures_join_all<T, E, F: std::future::Future<Output = Result<T, E>>>(
    futs: impl IntoIterator<Item = F>,
) -> Result<Vec<T>, E> {
    let futs: Vec<std::pin::Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut slots: Vec<Option<Result<T, E>>> = futs.iter().map(|_| None).collect();
    let mut futs: Vec<Option<std::pin::Pin<Box<F>>>> = futs.into_iter().map(Some).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (slot, fut) in slots.iter_mut().zip(futs.iter_mut()) {
            if let Some(f) = fut {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(r) => {
                        *slot = Some(r);
                        *fut = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    slots.into_iter().map(|s| s.expect("every future finished")).collect()
}

/// A job checked against its model, waiting for its decoded inputs.
struct Prepared {
    kind: PreparedKind,
}

enum PreparedKind {
    Encode,
    Edit { edits: Vec<(String, f64)>, latents: bool },
    Augment { variants: Vec<Vec<(String, f64)>>, keep_levels: usize, temperatures: Vec<f64>, seed: u64 },
    Interpolate { frames: usize },
    Sample { n: usize, temperatures: Vec<f64>, seed: u64 },
}

impl Prepared {
    fn op(&self, mut images: Vec<Pixels>) -> DeviceOp {
        let mut next = || images.remove(0);
        match &self.kind {
            PreparedKind::Encode => DeviceOp::Encode { image: next() },
            PreparedKind::Edit { edits, latents } => {
                DeviceOp::Edit { image: next(), edits: edits.clone(), latents: *latents }
            }
            PreparedKind::Augment { variants, keep_levels, temperatures, seed } => DeviceOp::Augment {
                image: next(),
                variants: variants.clone(),
                keep_levels: *keep_levels,
                temperatures: temperatures.clone(),
                seed: crate::worker::augment_noise_seed(*seed),
            },
            PreparedKind::Interpolate { frames } => {
                let a = next();
                DeviceOp::Interpolate { a, b: next(), frames: *frames }
            }
            PreparedKind::Sample { n, temperatures, seed } => {
                DeviceOp::Sample { n: *n, temperatures: temperatures.clone(), seed: *seed }
            }
        }
    }
}

/// Checks what the schema cannot know (the model's attributes and levels) and works out the device op's numbers
/// (augment's strength mixes come from the job's seed here).
fn prepare(job: &Job, info: &ModelInfo) -> Result<Prepared, StageError> {
    let invalid = |m: String| StageError::dead("invalid_for_model", Stage::Parse, m);
    let check_attr = |a: &str| {
        if info.attributes.iter().any(|x| x == a) {
            Ok(())
        } else if info.attributes.is_empty() {
            Err(StageError::dead(
                "unknown_attribute",
                Stage::Parse,
                format!(
                    "attribute {}: model {} {} has no attribute directions",
                    job::quote(a),
                    info.name,
                    info.version
                ),
            ))
        } else {
            Err(StageError::dead(
                "unknown_attribute",
                Stage::Parse,
                format!(
                    "attribute {} is not one of model {}'s: {}",
                    job::quote(a),
                    info.name,
                    info.attributes.join(", ")
                ),
            ))
        }
    };
    let kind = match &job.spec {
        JobSpec::Encode(_) => PreparedKind::Encode,
        JobSpec::Edit(j) => {
            for e in &j.edits {
                check_attr(&e.attribute)?;
            }
            PreparedKind::Edit {
                edits: j.edits.iter().map(|e| (e.attribute.clone(), e.strength)).collect(),
                latents: j.write_latents,
            }
        }
        JobSpec::Augment(j) => {
            for r in &j.attributes {
                check_attr(&r.attribute)?;
            }
            let keep = j.keep_levels as usize;
            if keep == 0 || keep > info.levels {
                return Err(invalid(format!(
                    "keep_levels {keep} is outside 1..={} for model {}",
                    info.levels, info.name
                )));
            }
            let temperatures = j.temperature.per_level(info.levels).map_err(invalid)?;
            let seed = job.seed().expect("augment jobs are seeded");
            let ranges: Vec<(String, f64, f64)> =
                j.attributes.iter().map(|r| (r.attribute.clone(), r.min, r.max)).collect();
            PreparedKind::Augment {
                variants: crate::worker::augment_mixes(&ranges, j.variants as usize, seed),
                keep_levels: keep,
                temperatures,
                seed,
            }
        }
        JobSpec::Interpolate(j) => PreparedKind::Interpolate { frames: j.frames as usize },
        JobSpec::Sample(j) => PreparedKind::Sample {
            n: j.n as usize,
            temperatures: j.temperature.per_level(info.levels).map_err(invalid)?,
            seed: job.seed().expect("sample jobs are seeded"),
        },
    };
    Ok(Prepared { kind })
}

/// The job's output files, in [`Job::output_names`] order.
fn encode_outputs(job: &Job, out: &DeviceOutput) -> Result<Vec<(Vec<u8>, MediaType)>, StageError> {
    let fail = |m: String| StageError::fatal("internal", Stage::Encode, m);
    let images = |format: job::ImageFormat| -> Result<Vec<(Vec<u8>, MediaType)>, StageError> {
        out.images
            .iter()
            .map(|p| output::image_bytes(p, format).map(|b| (b, format.media_type())).map_err(fail))
            .collect()
    };
    let latents = || -> Result<(Vec<u8>, MediaType), StageError> {
        let l = out.latents.as_ref().ok_or_else(|| fail("the device returned no latents".into()))?;
        let bpd = out.bits_per_dim.first().copied().unwrap_or(f64::NAN);
        output::latents_bytes(l, bpd).map(|b| (b, MediaType::OctetStream)).map_err(fail)
    };
    Ok(match &job.spec {
        JobSpec::Edit(j) => {
            let mut v = images(j.format)?;
            if j.write_latents {
                v.push(latents()?);
            }
            v
        }
        JobSpec::Encode(_) => vec![latents()?],
        JobSpec::Augment(j) => images(j.format)?,
        JobSpec::Sample(j) => images(j.format)?,
        JobSpec::Interpolate(j) => {
            let mut v = images(j.format)?;
            if j.animation {
                v.push((output::gif_bytes(&out.images).map_err(fail)?, MediaType::Gif));
            }
            v
        }
    })
}

/// The tokio runtime both `glowd run` and `glowd serve` drive the pipeline on. Two workers: the stages are I/O and
/// encoding glue; the heavy work runs on the device worker's own thread.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("glowd-pipeline")
        .build()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod traceparent_tests {
    use super::*;

    #[test]
    fn only_a_w3c_shaped_traceparent_is_carried() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let e = |v: &str| Envelope::new(vec![], None, None).with_traceparent(Some(v.as_bytes())).traceparent;
        assert_eq!(e(ok).as_deref(), Some(ok));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\nx: y",
        ] {
            assert_eq!(e(bad), None, "{bad:?}");
        }
        assert_eq!(Envelope::new(vec![], None, None).with_traceparent(Some(&[0xff, 0xfe])).traceparent, None);
    }
}
