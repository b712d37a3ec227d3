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
mod envelope;
pub mod error;
mod folder;
pub mod output;
mod prepare;
pub mod report;
mod stage_io;
pub mod store;
pub mod store_health;

pub use envelope::{Ack, Envelope};
pub use error::StageError;
use prepare::{encode_outputs, prepare};
pub use report::{DeadLetter, JsonlReporter, Reporter};
pub use crate::settings::PipelineSettings;
pub use store::{LocalStore, ObjectStore, PutOutcome, StoreError};
pub use store_health::{StoreHealth, StoreScope};

use crate::codec::image::Pixels;
use crate::job::{
    ErrorKind,
    self, AllowedPrefix, Disposition, Job, JobFailure, JobId, JobParser, JobResult, JobSpec, JobStatus, Manifest,
    MediaType, ModelProvenance, OutputEntry, SourcePosition, Stage, Timings, Work,
};
use crate::worker::{BatchItem, DeviceOp, DeviceOutput, DeviceWorker, ModelInfo};
use batcher::ModelQueue;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;


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
    /// `limits.max_in_flight_decoded_bytes`, in KiB.
    decode_permits: Arc<Semaphore>,
    put_permits: Arc<Semaphore>,
    /// Cancelled to abandon work in flight (after the drain deadline, or on a fatal error).
    abandon: CancellationToken,
    /// Cancelled to stop taking new jobs.
    intake: CancellationToken,
    fatal: Mutex<Option<StageError>>,
    counters: Counters,
    /// What the object stores' answers say about the daemon's own access: the retry budget of a fetch or a write
    /// only runs while the store answers something (during an outage nothing is the job's fault), and a denied
    /// request's budget only while the store serves that kind of request to that bucket.
    store_health: Arc<StoreHealth>,
}


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
        Ok(Arc::new(Pipeline {
            fetch_permits: Arc::new(Semaphore::new(settings.limits.fetch_concurrency)),
            byte_permits: Arc::new(Semaphore::new(kib(settings.limits.max_in_flight_bytes) as usize)),
            decode_permits: Arc::new(Semaphore::new(kib(settings.limits.max_in_flight_decoded_bytes) as usize)),
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
            store_health: Arc::new(StoreHealth::default()),
        }))
    }

    /// The object stores' answers to the daemon (for `/readyz`).
    pub fn store_health(&self) -> Arc<StoreHealth> {
        self.store_health.clone()
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
                // The job runs in a task of its own so that a panic in it is seen here: a panicking job would
                // otherwise drop its ack silently and freeze its partition's watermark while the daemon looks
                // healthy. The pipeline stops instead (not acknowledged, the job is redelivered after a restart).
                let job = this.clone();
                if let Err(e) = tokio::spawn(async move { job.handle(envelope).await }).await {
                    if e.is_panic() {
                        metrics::counter!("glowd_task_panics_total").increment(1);
                        let message = format!("a job's task panicked: {}", panic_text(e.into_panic()));
                        this.set_fatal(StageError::fatal(ErrorKind::Internal, Stage::Report, message));
                    }
                }
                metrics::gauge!("glowd_jobs_in_flight").decrement(1.0);
                drop(permit);
            });
        }
        tracker.close();
        let deadline = Duration::from_secs_f64(self.settings.limits.drain_timeout_seconds);
        if tokio::time::timeout(deadline, tracker.wait()).await.is_err() {
            tracing::warn!(left = tracker.len(), "drain deadline passed: abandoning the jobs still in flight");
            self.abandon.cancel();
            let _ = tokio::time::timeout(ABANDON_WAIT, tracker.wait()).await;
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
        tracing::error!(kind = e.kind.as_str(), stage = ?e.stage, error = %e.message, "fatal: the pipeline stops");
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
        // The contract only: this pipeline's limits and allowed prefixes are applied after the job's folder has been
        // looked at, so a finished job is reported done whatever they are now (`run_job`).
        let job = match self.parser.parse_contract(payload) {
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
                record.precision = Some(self.settings.batching.precision);
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
                    Err(e) if e.abandoned => Outcome::Abandoned,
                    Err(e) => {
                        self.set_fatal(e);
                        Outcome::Abandoned
                    }
                }
            }
            Err((e, _)) if e.abandoned => Outcome::Abandoned,
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
        tracing::warn!(job = id.map(|i| i.as_str()).unwrap_or("-"), kind = e.kind.as_str(), stage = ?e.stage,
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
            precision: None,
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
                metrics::counter!("glowd_dead_letters_total", "reason" => e.kind.as_str()).increment(1);
                Outcome::DeadLettered
            }
            Err(err) if err.abandoned => Outcome::Abandoned,
            Err(err) => {
                self.set_fatal(err);
                Outcome::Abandoned
            }
        }
    }




    /// Runs a job to its written outputs: (keys, bits/dim, why it was skipped instead, if it was), or the error
    /// and the attempts made. A job whose manifest shows the same work finished earlier (a redelivery after a crash
    /// before the commit) is answered from that manifest before anything else: its inputs may be gone, its model
    /// redeployed or this pipeline's limits lowered since, and none of that makes a finished job a dead letter.
    async fn run_job(
        &self,
        job: &Job,
        timings: &mut Timings,
    ) -> Result<(Vec<String>, Vec<f64>, Option<String>), (StageError, u32)> {
        let work = Work::of(job, self.precision());
        if let Some(done) = self.finished(job, &work).await? {
            metrics::counter!("glowd_jobs_found_finished_total").increment(1);
            tracing::info!(fingerprint = %work.fingerprint, "finished earlier: reported from its manifest");
            let mut keys: Vec<String> = done.outputs.iter().map(|o| o.key.clone()).collect();
            keys.push(format!("{}{}", job::output_prefix(&self.settings.output.prefix, job), job::MANIFEST_NAME));
            return Ok((keys, done.bits_per_dim, None));
        }
        self.parser.admit(job).map_err(|e| (StageError::from(&e), 1))?;
        let (model_index, info) = self.model_for(job).map_err(|e| (e, 1))?;
        let prepared = prepare(job, info).map_err(|e| (e, 1))?;
        let (images, _decoded_bytes) = self.fetch_and_decode(job, info, timings).await?;
        let t = Instant::now();
        let op = prepared.op(images);
        let output = self.retrying(|| self.on_device(model_index, op.clone())).await?;
        Self::stage_time(&mut timings.device_seconds, t, "device");
        if self.settings.gate.action == crate::settings::GateAction::Skip {
            if let Some(reason) = self.settings.gate.over(&output.bits_per_dim) {
                return Ok((vec![], output.bits_per_dim.clone(), Some(reason)));
            }
        }
        let names = job.output_names();
        let encoded = self.encode(job, &names, &output, timings).await?;
        let keys = self.write(job, &work, info, &names, encoded, &output.bits_per_dim, timings).await?;
        Ok((keys, output.bits_per_dim, None))
    }

    /// Fetches the job's inputs and decodes them to the model's pixels. The returned permit holds the job's share
    /// of `max_in_flight_bytes` until the job is done with its inputs.
    ///
    /// Both memory budgets hold before the memory is taken: the job reserves `images.max_input_bytes` per input
    /// (at most the whole `max_in_flight_bytes`) before it reads any and gives back what its inputs did not take;
    /// then it reserves its images' decoded size, read from their headers, in `max_in_flight_decoded_bytes`
    /// before any pixel is decoded, and gives it back once the pixels are the model's size.
    async fn fetch_and_decode(
        &self,
        job: &Job,
        info: &ModelInfo,
        timings: &mut Timings,
    ) -> Result<(Vec<Pixels>, tokio::sync::OwnedSemaphorePermit), (StageError, u32)> {
        let t = Instant::now();
        let inputs = job.inputs();
        let limits = &self.settings.limits;
        let reserve = (inputs.len() as u64).saturating_mul(self.settings.images.max_input_bytes);
        let reserve = kib(reserve).min(kib(limits.max_in_flight_bytes));
        let mut bytes_permit = tokio::select! {
            _ = self.abandon.cancelled() => return Err((StageError::abandoned(Stage::Fetch), 1)),
            p = self.byte_permits.clone().acquire_many_owned(reserve) => p.expect("never closed"),
        };
        let mut blobs = Vec::new();
        for uri in inputs {
            let bytes = self.retrying(|| self.fetch(&uri.bucket, &uri.key)).await?;
            blobs.push((uri.to_string(), bytes));
        }
        Self::stage_time(&mut timings.fetch_seconds, t, "fetch");
        let total: u64 = blobs.iter().map(|(_, b)| b.len() as u64).sum();
        let taken = kib(total).min(reserve) as usize;
        if bytes_permit.num_permits() > taken {
            drop(bytes_permit.split(bytes_permit.num_permits() - taken));
        }

        let settings = self.settings.images.clone();
        let mut peak = 0u64;
        for (label, bytes) in &blobs {
            let header = decode::read_header(bytes, &settings, label).map_err(|e| (e, 1))?;
            peak = peak.saturating_add(header.peak_bytes());
        }
        let budget = limits.max_in_flight_decoded_bytes;
        if peak > budget {
            let m = format!(
                "decoding needs {peak} bytes (twice the decoded images: the decoder's buffer and the crop copy), over \
                 limits.max_in_flight_decoded_bytes = {budget}"
            );
            return Err((StageError::dead(ErrorKind::OverDecodeBudget, Stage::Decode, m), 1));
        }
        let decode_permit = tokio::select! {
            _ = self.abandon.cancelled() => return Err((StageError::abandoned(Stage::Decode), 1)),
            p = self.decode_permits.clone().acquire_many_owned(kib(peak)) => p.expect("never closed"),
        };
        metrics::gauge!("glowd_decode_reserved_bytes").increment(peak as f64);
        let t = Instant::now();
        let (channels, size) = (info.channels, info.image_size);
        let decoded = tokio::task::spawn_blocking(move || {
            blobs
                .iter()
                .map(|(label, bytes)| decode::decode_image(bytes, &settings, channels, size, label))
                .collect::<Result<Vec<Pixels>, StageError>>()
        })
        .await;
        drop(decode_permit);
        metrics::gauge!("glowd_decode_reserved_bytes").decrement(peak as f64);
        let images = decoded
            .map_err(|e| (StageError::retry(ErrorKind::DecodePanic, Stage::Decode, e.to_string()), 1))?
            .map_err(|e| (e, 1))?;
        Self::stage_time(&mut timings.decode_seconds, t, "decode");
        Ok((images, bytes_permit))
    }

    /// Encodes the device's answer into the job's output files, one per name in `names`, off the runtime's threads.
    async fn encode(
        &self,
        job: &Job,
        names: &[String],
        output: &DeviceOutput,
        timings: &mut Timings,
    ) -> Result<Vec<(Vec<u8>, MediaType)>, (StageError, u32)> {
        let t = Instant::now();
        let encoded = {
            let job = job.clone();
            let output = output.clone();
            let precision = self.settings.batching.precision;
            tokio::task::spawn_blocking(move || encode_outputs(&job, &output, precision))
                .await
                .map_err(|e| (StageError::retry(ErrorKind::EncodePanic, Stage::Encode, e.to_string()), 1))?
                .map_err(|e| (e, 1))?
        };
        if encoded.len() != names.len() {
            let m = format!("{} outputs encoded for {} names", encoded.len(), names.len());
            return Err((StageError::fatal(ErrorKind::Internal, Stage::Encode, m), 1));
        }
        Self::stage_time(&mut timings.encode_seconds, t, "encode");
        Ok(encoded)
    }

    /// Writes the claim, every output create-only, then the manifest last; returns every key written, the
    /// manifest's last.
    #[allow(clippy::too_many_arguments)]
    async fn write(
        &self,
        job: &Job,
        work: &Work,
        info: &ModelInfo,
        names: &[String],
        encoded: Vec<(Vec<u8>, MediaType)>,
        bits_per_dim: &[f64],
        timings: &mut Timings,
    ) -> Result<Vec<String>, (StageError, u32)> {
        let t = Instant::now();
        let prefix = job::output_prefix(&self.settings.output.prefix, job);
        let bucket = self.settings.output.bucket.as_str();
        // The claim first: from here on the folder is this work's, and a job under the same id with other work is
        // refused before it writes anything.
        let claim = job::Claim {
            version: job::report::V1,
            job: job.clone(),
            work: work.clone(),
            outputs: names.iter().zip(&encoded).map(|(n, (b, m))| OutputEntry::of(format!("{prefix}{n}"), *m, b)).collect(),
        };
        let claim_key = folder::claim_key(&prefix);
        let owner = self.retrying(|| self.claim(bucket, &claim_key, &claim)).await?;
        let ceiling = self.settings.output.max_readback_bytes;
        let owner = &owner;
        let writes = names.iter().zip(encoded).map(|(name, (bytes, media))| {
            let key = format!("{prefix}{name}");
            async move {
                let bound = folder::readback_bound(owner, &key, bytes.len(), ceiling);
                let stored = self.retrying(|| self.put(bucket, &key, bytes.clone(), media, bound)).await?;
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
                precision: Some(self.settings.batching.precision),
            },
            outputs: entries,
            bits_per_dim: bits_per_dim.to_vec(),
            work: Some(work.clone()),
        };
        let mut manifest_bytes = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| (StageError::fatal(ErrorKind::Internal, Stage::Encode, e.to_string()), 1))?;
        manifest_bytes.push(b'\n');
        let manifest_key = format!("{prefix}{}", job::MANIFEST_NAME);
        self.retrying(|| self.put_manifest(job, work, bucket, &manifest_key, manifest_bytes.clone())).await?;
        Self::stage_time(&mut timings.put_seconds, t, "put");
        let mut keys: Vec<String> = manifest.outputs.iter().map(|o| o.key.clone()).collect();
        keys.push(manifest_key);
        Ok(keys)
    }

    fn model_for(&self, job: &Job) -> Result<(usize, &ModelInfo), StageError> {
        let found = self.models.iter().position(|(m, _)| m.name == job.model.name && m.version == job.model.version);
        match found {
            Some(i) => Ok((i, &self.models[i].0)),
            None => {
                let known: Vec<String> = self.models.iter().map(|(m, _)| format!("{} {}", m.name, m.version)).collect();
                Err(StageError::dead(
                    ErrorKind::UnknownModel,
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





    /// Stops taking new jobs (the jobs in flight go on).
    pub fn stop_intake(&self) {
        self.intake.cancel();
    }
}


/// Awaits futures concurrently, in order; the first error wins.
/// The message of a caught panic.
fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

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


/// `bytes` in KiB, rounded up, at least 1 and at most what tokio's `acquire_many` takes.
fn kib(bytes: u64) -> u32 {
    bytes.div_ceil(1024).clamp(1, u32::MAX as u64) as u32
}

/// After the drain deadline, how long abandoned jobs get to notice and unwind (they are not acknowledged).
const ABANDON_WAIT: Duration = Duration::from_secs(5);

/// Worker threads of the pipeline's tokio runtime: the stages are I/O and encoding glue; the heavy work runs on
/// the device worker's own thread.
pub const RUNTIME_THREADS: usize = 2;

/// The tokio runtime `glowd run`, `glowd serve` and the tools drive the pipeline on.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(RUNTIME_THREADS)
        .enable_all()
        .thread_name("glowd-pipeline")
        .build()
}

