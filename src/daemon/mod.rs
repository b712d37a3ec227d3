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
pub mod config;
pub mod http;
pub mod kafka;
pub mod s3;

use crate::ack::AckConfig;
use crate::pipeline::embedded::start_workers;
use crate::pipeline::{Pipeline, RunSummary};
use config::PipelineFile;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Key of the conditional-write probe, under the output prefix.
pub const SELF_TEST_KEY: &str = ".glowd/conditional-write-probe";

/// Runs the daemon until SIGTERM/SIGINT; returns the counts of the run, or why it could not start or had to stop.
pub fn serve(config_path: &Path) -> Result<RunSummary, String> {
    let file = PipelineFile::load(config_path).map_err(|e| e.to_string())?;
    let kafka = file.kafka.clone().ok_or("the pipeline file has no [kafka] table: `glowd serve` needs one")?;
    let s3 = file.s3.clone().ok_or("the pipeline file has no [s3] table: `glowd serve` needs one")?;
    if file.models.is_empty() {
        return Err("the pipeline file names no models ([[models]] or models_dir)".into());
    }
    if file.pipeline.output.bucket.is_empty() {
        return Err("output.bucket: the daemon needs an output bucket".into());
    }
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| format!("metrics recorder: {e}"))?;
    let runtime = crate::pipeline::runtime()?;
    let ready = Arc::new(AtomicBool::new(false));
    let draining = Arc::new(AtomicBool::new(false));
    runtime.block_on(async {
        // The recorder keeps every histogram sample until it is drained: by a scrape, or by this upkeep. Without it a
        // daemon nobody scrapes (compose, a cluster without Prometheus) grows by every job's timings, found by the
        // G7 soak at about 20 MiB/h.
        let upkeep = prometheus.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                upkeep.run_upkeep();
            }
        });
        // Health endpoints first, so a slow model load shows as "starting" rather than as a dead pod.
        let health = http::Health {
            prometheus,
            max_poll_silence_seconds: file.http.max_poll_silence_seconds,
            ready: ready.clone(),
            draining: draining.clone(),
            source: Default::default(),
        };
        let pre = http::serve(&file.http.listen, health.clone()).await?;
        tracing::info!(addr = %pre, "http listening (not ready yet)");
        // Kafka first, before any model is loaded: a broker must answer with these settings (credentials accepted,
        // certificate verified) within kafka.connect_timeout_seconds, or the daemon exits non-zero, never ready,
        // with the cause in one line.
        let probe = kafka.clone();
        tokio::task::spawn_blocking(move || kafka::check_brokers(&probe))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("kafka: {e}"))?;
        let workers = tokio::task::spawn_blocking({
            let settings = file.pipeline.clone();
            let models = file.models.clone();
            move || start_workers(&settings, &models)
        })
        .await
        .map_err(|e| e.to_string())??;
        let store = Arc::new(s3::S3Store::new(&s3).await);
        let prefix = file.pipeline.output.prefix.trim_end_matches('/');
        let probe = if prefix.is_empty() { SELF_TEST_KEY.to_string() } else { format!("{prefix}/{SELF_TEST_KEY}") };
        let self_test_started = std::time::Instant::now();
        store.self_test(&file.pipeline.output.bucket, &probe).await?;
        tracing::info!(
            bucket = %file.pipeline.output.bucket,
            self_test_ms = self_test_started.elapsed().as_millis() as u64,
            "S3 honours create-only writes"
        );
        let reporter = Arc::new(kafka::KafkaReporter::new(&kafka)?);
        let pipeline = Pipeline::new(
            file.pipeline.clone(),
            &workers,
            store.clone(),
            store,
            reporter,
            Some(file.allowed_inputs()),
        )?;
        let (tx, rx) = tokio::sync::mpsc::channel(kafka.buffer.max(1));
        let ack = AckConfig { max_in_flight_per_partition: file.pipeline.limits.max_in_flight_jobs.max(1) };
        let source = kafka::KafkaSource::start(&kafka, ack, tx)?;
        let _ = health.source.set(source.state.clone());
        let watchdog_state = source.state.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                metrics::gauge!("glowd_poll_silence_seconds").set(watchdog_state.seconds_since_poll());
            }
        });
        ready.store(true, Ordering::SeqCst);
        tracing::info!(models = workers[0].models.len(), devices = workers.len(), "ready");
        let stop = CancellationToken::new();
        tokio::spawn(signals(stop.clone()));
        // An error waiting cannot mend (bad credentials, a certificate that does not verify) stops the daemon like
        // a SIGTERM would, and it then exits non-zero: a crash loop with the reason in the log is what an operator
        // sees, rather than a pod that runs and never consumes.
        let fatal_state = source.state.clone();
        let stop_on_fatal = stop.clone();
        tokio::spawn(async move {
            loop {
                if let Some(f) = fatal_state.fatal.get() {
                    tracing::error!(error = %f, "kafka: cannot go on, stopping");
                    stop_on_fatal.cancel();
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        });
        let stop_for_source = stop.clone();
        let summary = {
            let run = pipeline.run(rx, stop.clone());
            tokio::pin!(run);
            tokio::select! {
                r = &mut run => r,
                _ = stop_for_source.cancelled() => {
                    draining.store(true, Ordering::SeqCst);
                    source.stop_intake();
                    tracing::info!("stopping: no new jobs, draining the ones in flight");
                    run.await
                }
            }
        };
        draining.store(true, Ordering::SeqCst);
        let state = source.state.clone();
        if state.fatal.get().is_some() {
            // The broker refuses this client (credentials, TLS): the final commit and leaving the group cannot
            // succeed, and librdkafka waits for them up to the group's session timeout (45 s by default). The
            // consumer thread gets a few seconds, on a plain thread the runtime does not wait for, then the daemon
            // exits regardless; nothing it could have committed is lost (finished jobs' outputs are create-only).
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            std::thread::spawn(move || {
                source.finish();
                let _ = done_tx.send(());
            });
            if tokio::time::timeout(std::time::Duration::from_secs(5), done_rx).await.is_err() {
                tracing::warn!("kafka: the consumer did not close within 5 s (the broker refuses it); exiting anyway");
            }
        } else {
            tokio::task::spawn_blocking(move || source.finish()).await.map_err(|e| e.to_string())?;
        }
        if let Some(f) = state.fatal.get() {
            return Err(format!("kafka: {f}"));
        }
        let summary = summary.map_err(|e| e.to_string())?;
        tracing::info!(?summary, "stopped");
        Ok(summary)
    })
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
