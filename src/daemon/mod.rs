//! The daemon (`glowd serve`): the pipeline core with a Kafka source ([`kafka::KafkaSource`]), the S3 store
//! ([`s3::S3Store`]) for inputs and outputs, Kafka reporting ([`kafka::KafkaReporter`]: results topic, DLQ topic with
//! reason headers), and `/metrics`, `/healthz`, `/readyz` ([`http`]).
//!
//! Start-up: the pipeline file is checked, a Kafka broker must answer a metadata request with the configured
//! security settings (an authentication or TLS failure, or no broker within `kafka.connect_timeout_seconds`, ends
//! `glowd serve` non-zero with the cause), the models are loaded and warmed up on their device threads, the S3
//! store's conditional writes are self-tested, and only then does the consumer join the group (a daemon that
//! cannot do the work never takes partitions from one that can). Stop: SIGTERM or SIGINT stops intake (the
//! partitions are paused, polling goes on), the jobs in flight drain within `limits.drain_timeout_seconds`, the
//! finished offsets are committed synchronously, the group is left, and the process exits 0.
pub mod embedded;
mod error;
pub mod http;

pub use error::StartError;

use crate::daemon::embedded::start_workers;
use crate::kafka::ack::AckConfig;
use crate::kafka::{check_brokers, KafkaReporter, KafkaSource};
use crate::pipeline::{Envelope, Pipeline, RunSummary};
use crate::s3::S3Store;
use crate::settings::{KafkaSettings, PipelineFile, S3Settings};
use crate::worker::DeviceWorker;
use std::time::Duration;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Key of the conditional-write probe, under the output prefix.
pub const SELF_TEST_KEY: &str = ".glowd/conditional-write-probe";

/// How often the metrics recorder drops the histogram samples no scrape has taken. Without it a daemon nobody
/// scrapes (compose, a cluster without Prometheus) grows by every job's timings, found by the G7 soak at about
/// 20 MiB/h.
const METRICS_UPKEEP_EVERY: Duration = Duration::from_secs(5);
/// How often the poll-silence and device gauges are refreshed.
const GAUGES_EVERY: Duration = Duration::from_secs(5);
/// How long the consumer may take to close after a fatal Kafka error (the broker refuses it, so the final commit
/// and the leave cannot succeed; librdkafka would wait for them up to the session timeout).
const FATAL_CLOSE_WAIT: Duration = Duration::from_secs(5);
/// Histogram buckets of the job and stage timings, in seconds.
const TIMING_BUCKETS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// What `glowd serve` needs from a pipeline file, checked before anything starts.
struct Checked {
    file: PipelineFile,
    kafka: KafkaSettings,
    s3: S3Settings,
}

/// A started daemon: everything is connected and loaded, the consumer is in the group.
struct Started {
    pipeline: std::sync::Arc<Pipeline>,
    source: KafkaSource,
    jobs: tokio::sync::mpsc::Receiver<Envelope>,
    /// One per device thread: what `/healthz` reads to notice a hung device.
    device_watches: Vec<Arc<crate::worker::DeviceWatch>>,
}

/// Runs the daemon until SIGTERM/SIGINT; returns the counts of the run, or why it could not start or had to stop.
pub fn serve(config_path: &Path) -> Result<RunSummary, StartError> {
    let checked = check(config_path)?;
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&TIMING_BUCKETS)
        .map_err(|e| StartError::Metrics(e.to_string()))?
        .install_recorder()
        .map_err(|e| StartError::Metrics(e.to_string()))?;
    let runtime = crate::pipeline::runtime()?;
    runtime.block_on(async {
        let upkeep = prometheus.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(METRICS_UPKEEP_EVERY).await;
                upkeep.run_upkeep();
            }
        });
        // Health endpoints first, so a slow model load shows as "starting" rather than as a dead pod.
        let health = http::Health {
            prometheus,
            max_poll_silence_seconds: checked.file.http.max_poll_silence_seconds,
            ready: Arc::new(AtomicBool::new(false)),
            draining: Arc::new(AtomicBool::new(false)),
            source: Default::default(),
            store: Default::default(),
            devices: Default::default(),
        };
        let addr = http::serve(&checked.file.http.listen, health.clone()).await.map_err(StartError::Http)?;
        tracing::info!(addr = %addr, "http listening (not ready yet)");
        let started = start(&checked).await?;
        let _ = health.source.set(started.source.state.clone());
        let _ = health.store.set(started.pipeline.store_health());
        let _ = health.devices.set(started.device_watches.clone());
        // The poll-silence and device gauges move without anyone probing (a scrape only reads them; the probe also
        // refreshes the device ones). Set before the first wait, so that a run shorter than one period shows them.
        let watches = started.device_watches.clone();
        let source_state = started.source.state.clone();
        tokio::spawn(async move {
            loop {
                metrics::gauge!("glowd_poll_silence_seconds").set(source_state.seconds_since_poll());
                http::check_devices(&watches);
                tokio::time::sleep(GAUGES_EVERY).await;
            }
        });
        health.ready.store(true, Ordering::SeqCst);
        run_until_stopped(started, &health.draining).await
    })
}

/// The pipeline file, and the tables and values `serve` cannot do without.
fn check(config_path: &Path) -> Result<Checked, StartError> {
    let file = PipelineFile::load(config_path)?;
    let kafka = file.kafka.clone().ok_or(StartError::MissingTable("kafka"))?;
    let s3 = file.s3.clone().ok_or(StartError::MissingTable("s3"))?;
    if file.models.is_empty() {
        return Err(StartError::NoModels);
    }
    if file.pipeline.output.bucket.is_empty() {
        return Err(StartError::NoOutputBucket);
    }
    Ok(Checked { file, kafka, s3 })
}

/// Connects and loads everything, in the order that keeps a daemon that cannot work out of the group: Kafka
/// first (a broker must answer with these settings, credentials accepted and certificate verified, within
/// `kafka.connect_timeout_seconds`), then the models on their device threads, then the S3 self-test, and only
/// then the consumer joins the group.
async fn start(c: &Checked) -> Result<Started, StartError> {
    let probe = c.kafka.clone();
    tokio::task::spawn_blocking(move || check_brokers(&probe)).await?.map_err(StartError::Kafka)?;
    let workers: Vec<DeviceWorker> = tokio::task::spawn_blocking({
        let settings = c.file.pipeline.clone();
        let models = c.file.models.clone();
        move || start_workers(&settings, &models)
    })
    .await??;
    let store = Arc::new(S3Store::new(&c.s3).await);
    let bucket = &c.file.pipeline.output.bucket;
    let probe = crate::job::join_key(&c.file.pipeline.output.prefix, SELF_TEST_KEY);
    let self_test_started = std::time::Instant::now();
    store.self_test(bucket, &probe).await?;
    tracing::info!(
        bucket = %bucket,
        self_test_ms = self_test_started.elapsed().as_millis() as u64,
        "S3 honours create-only writes"
    );
    let reporter = Arc::new(KafkaReporter::new(&c.kafka).map_err(StartError::Kafka)?);
    let pipeline = Pipeline::new(
        c.file.pipeline.clone(),
        &workers,
        store.clone(),
        store,
        reporter,
        Some(c.file.allowed_inputs()),
    )
    .map_err(StartError::Settings)?;
    let (tx, jobs) = tokio::sync::mpsc::channel(c.kafka.buffer.max(1));
    let ack = AckConfig { max_in_flight_per_partition: c.file.pipeline.limits.max_in_flight_jobs.max(1) };
    let source = KafkaSource::start(&c.kafka, ack, tx).map_err(StartError::Kafka)?;
    tracing::info!(models = workers[0].models.len(), devices = workers.len(), "ready");
    let device_watches = workers.iter().map(|w| w.watch.clone()).collect();
    Ok(Started { pipeline, source, jobs, device_watches })
}

/// Runs jobs until SIGTERM/SIGINT or a fatal Kafka error, then drains and closes.
async fn run_until_stopped(started: Started, draining: &AtomicBool) -> Result<RunSummary, StartError> {
    let Started { pipeline, source, jobs, .. } = started;
    let stop = CancellationToken::new();
    tokio::spawn(signals(stop.clone()));
    // An error waiting cannot mend (bad credentials, a certificate that does not verify) stops the daemon like a
    // SIGTERM would, and it then exits non-zero: a crash loop with the reason in the log is what an operator sees,
    // rather than a pod that runs and never consumes.
    let state = source.state.clone();
    let stop_on_fatal = stop.clone();
    tokio::spawn(async move {
        let fatal = state.fatal_error().await;
        tracing::error!(error = %fatal, "kafka: cannot go on, stopping");
        stop_on_fatal.cancel();
    });
    let summary = {
        let run = pipeline.run(jobs, stop.clone());
        tokio::pin!(run);
        tokio::select! {
            r = &mut run => r,
            _ = stop.cancelled() => {
                draining.store(true, Ordering::SeqCst);
                source.stop_intake();
                tracing::info!("stopping: no new jobs, draining the ones in flight");
                run.await
            }
        }
    };
    draining.store(true, Ordering::SeqCst);
    close(source).await?;
    let summary = summary.map_err(|e| StartError::Pipeline(e.to_string()))?;
    tracing::info!(?summary, "stopped");
    Ok(summary)
}

/// Commits what is finished and leaves the group; after a fatal Kafka error, returns it.
async fn close(source: KafkaSource) -> Result<(), StartError> {
    let state = source.state.clone();
    if state.fatal().is_some() {
        // The broker refuses this client: the consumer thread gets a few seconds, on a plain thread the runtime does
        // not wait for, then the daemon exits regardless; nothing it could have committed is lost (finished jobs'
        // outputs are create-only).
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            source.finish();
            let _ = done_tx.send(());
        });
        if tokio::time::timeout(FATAL_CLOSE_WAIT, done_rx).await.is_err() {
            tracing::warn!(wait = ?FATAL_CLOSE_WAIT, "kafka: the consumer did not close in time (the broker refuses it); exiting anyway");
        }
    } else {
        tokio::task::spawn_blocking(move || source.finish()).await?;
    }
    match state.fatal() {
        Some(f) => Err(StartError::Kafka(f.to_string())),
        None => Ok(()),
    }
}

async fn signals(stop: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
    stop.cancel();
}
