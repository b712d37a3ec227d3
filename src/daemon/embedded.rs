//! The embedded mode: the pipeline with a local source and sink, no Kafka or S3. Job lines come from a JSON-lines
//! file (the same JSON as the Kafka messages), `s3://bucket/key` inputs are read from `<input dir>/bucket/key`,
//! outputs go to `<output dir>/<prefix>/<job id>/…`, results and dead letters to JSON-lines files.
use crate::pipeline::{Envelope, JsonlReporter, LocalStore, Pipeline, PipelineSettings, RunSummary};
use super::StartError;
use crate::job::SourcePosition;
use crate::worker::{discover_models, DeviceWorker, ModelSpec, WorkerConfig};
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Kafka's longest topic name.
const MAX_TOPIC_CHARS: usize = 249;

#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// A model folder, or a folder of model folders (see [`discover_models`]).
    pub model_dir: PathBuf,
    pub jobs: PathBuf,
    pub input_dir: PathBuf,
    pub output_dir: PathBuf,
    /// Default `<output dir>/results.jsonl`.
    pub results: Option<PathBuf>,
    /// Default `<output dir>/dead-letters.jsonl`.
    pub dead_letters: Option<PathBuf>,
    pub settings: PipelineSettings,
}

impl EmbeddedOptions {
    pub fn results_path(&self) -> PathBuf {
        self.results.clone().unwrap_or_else(|| self.output_dir.join("results.jsonl"))
    }

    pub fn dead_letters_path(&self) -> PathBuf {
        self.dead_letters.clone().unwrap_or_else(|| self.output_dir.join("dead-letters.jsonl"))
    }
}

/// Loads the models, starts the device workers, runs every job line, and returns the counts. Ctrl-C stops the
/// intake and drains. An error means the run could not start or stopped on a fatal error.
pub fn run_embedded(opts: &EmbeddedOptions) -> Result<RunSummary, StartError> {
    opts.settings.check().map_err(StartError::Settings)?;
    let specs = discover_models(&opts.model_dir)
        .map_err(|e| StartError::Models(format!("{}: {e}", opts.model_dir.display())))?;
    if specs.is_empty() {
        return Err(StartError::Models(format!(
            "{}: no model folders (config.json + weights.safetensors) found",
            opts.model_dir.display()
        )));
    }
    let workers = start_workers(&opts.settings, &specs)?;
    let runtime = crate::pipeline::runtime()?;
    runtime.block_on(async {
        let reporter = JsonlReporter::create(&opts.results_path(), &opts.dead_letters_path())
            .map_err(|e| StartError::Input(format!("{}: {e}", opts.output_dir.display())))?;
        let pipeline = Pipeline::new(
            opts.settings.clone(),
            &workers,
            Arc::new(LocalStore::with_buckets(&opts.input_dir)),
            Arc::new(LocalStore::flat(&opts.output_dir)),
            Arc::new(reporter),
            None,
        )
        .map_err(StartError::Settings)?;
        let (tx, rx) = mpsc::channel(opts.settings.limits.max_in_flight_jobs);
        let reader = spawn_reader(opts.jobs.clone(), tx)?;
        // No probe restarts `glowd run`: a hung device is said in the log (once per hung pass) instead.
        let watches: Vec<_> = workers.iter().map(|w| w.watch.clone()).collect();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                crate::daemon::http::check_devices(&watches);
            }
        });
        let stop = CancellationToken::new();
        let on_signal = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                tracing::warn!("interrupted: no new jobs; draining the ones in flight");
                on_signal.cancel();
            }
        });
        let summary = pipeline.run(rx, stop).await.map_err(|e| StartError::Pipeline(e.to_string()))?;
        drop(pipeline);
        reader.join().map_err(|_| StartError::Input("the jobs reader panicked".into()))?.map_err(StartError::Input)?;
        Ok(summary)
    })
}

/// One worker per configured device, each holding every model.
pub fn start_workers(settings: &PipelineSettings, specs: &[ModelSpec]) -> Result<Vec<DeviceWorker>, StartError> {
    settings
        .batching
        .devices
        .iter()
        .map(|d| {
            DeviceWorker::spawn(
                WorkerConfig {
                    device: d.clone(),
                    threads: settings.batching.threads,
                    max_batch: settings.batching.max_batch,
                    precision: settings.batching.precision,
                    max_pass_seconds: settings.batching.max_pass_seconds,
                },
                specs.to_vec(),
            )
            .map_err(|e| StartError::Models(e.to_string()))
        })
        .collect()
}

/// Reads the jobs file on its own thread, one envelope per non-empty line; the bounded channel holds it back when
/// the pipeline is full. The source position is (file name, 0, line number from 0).
fn spawn_reader(
    path: PathBuf,
    tx: mpsc::Sender<Envelope>,
) -> Result<std::thread::JoinHandle<Result<(), String>>, StartError> {
    let file = std::fs::File::open(&path).map_err(|e| StartError::Input(format!("{}: {e}", path.display())))?;
    let topic: String = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "jobs".into());
    // Kafka's own limit on topic names, so an embedded run's source positions look like a daemon's.
    let topic: String = topic.chars().take(MAX_TOPIC_CHARS).collect();
    std::thread::Builder::new()
        .name("glowd-jobs-reader".into())
        .spawn(move || {
            let mut reader = std::io::BufReader::new(file);
            let mut line = Vec::new();
            let mut number = 0i64;
            loop {
                line.clear();
                let n = reader.read_until(b'\n', &mut line).map_err(|e| format!("{}: {e}", path.display()))?;
                if n == 0 {
                    return Ok(());
                }
                let payload = line.strip_suffix(b"\n").unwrap_or(&line);
                let payload = payload.strip_suffix(b"\r").unwrap_or(payload);
                if !payload.iter().all(u8::is_ascii_whitespace) {
                    let source = SourcePosition { topic: topic.clone(), partition: 0, offset: number };
                    if tx.blocking_send(Envelope::new(payload.to_vec(), Some(source), None)).is_err() {
                        return Ok(()); // the pipeline stopped taking jobs
                    }
                }
                number += 1;
            }
        })
        .map_err(StartError::Runtime)
}
