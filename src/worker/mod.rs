//! The device worker: the one place where the pipeline's plain data meets the model.
//!
//! One OS thread per device owns that device's models (loaded, checked and warmed up at the largest batch on the
//! thread itself) and receives [`Batch`]es of plain-data [`DeviceOp`]s over a channel; each op is answered on its
//! own oneshot. Nothing here leaks a tch type: the pipeline sees [`Pixels`], `f32` latents and numbers. A panic
//! while running a batch is caught and answers every op of the batch with [`DeviceError::Panicked`]; the thread
//! lives on.
//!
//! Batching: the ops of one batch share one encode pass over all their input images (chunked at `max_batch`), and
//! the edit decodes of the batch share one decode pass. Seeded ops (augment, sample) draw their noise for the whole
//! op at once from the op's own seed, so their results never depend on what else was in the batch, and decode in
//! passes of at most `max_batch` (a sample of 256 is 16 passes of 16, the size the warm-up ran), with the same
//! bytes as one pass; encode and decode passes never run at batch size one (see `encode_chunked`), so neither do
//! theirs.
mod exec;
mod op;
mod watch;

pub use exec::{augment_mixes, augment_noise_seed, load_model};
#[cfg(test)]
pub(crate) use exec::serve_batches;
pub use op::*;
pub use watch::{DeviceWatch, Stall};

use crate::model::device::device_name;
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

use exec::{load_models, panic_message, serve};

/// A running device thread. Dropping every clone of its sender stops the thread after the batch in hand.
#[derive(Clone)]
pub struct DeviceWorker {
    /// Capacity 1: a batcher reserves the slot once it has an op, then takes whatever else is queued, so batches
    /// grow while the device is busy (a pull batcher).
    tx: mpsc::Sender<Batch>,
    pub device: String,
    pub models: Arc<Vec<ModelInfo>>,
    pub max_batch: usize,
    /// The device thread's progress: `/healthz` fails while a pass runs past its bound (a hung device).
    pub watch: Arc<DeviceWatch>,
}

impl DeviceWorker {
    /// Starts the thread, loads and warms up every model on it, and returns once it is ready (or the first load
    /// error).
    pub fn spawn(config: WorkerConfig, specs: Vec<ModelSpec>) -> Result<DeviceWorker, DeviceError> {
        let (tx, rx) = mpsc::channel::<Batch>(1);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let device_label = config.device.clone();
        let max_batch = config.max_batch.max(1);
        // The warm-up itself is covered by the startup probe; the bound is set from its slowest pass below.
        let watch = Arc::new(DeviceWatch::new(&device_label, DeviceWatch::bound_for(config.max_pass_seconds, Duration::ZERO)));
        let thread_watch = watch.clone();
        std::thread::Builder::new()
            .name(format!("glowd-device-{device_label}"))
            .spawn(move || {
                crate::model::device::flush_denormals();
                if config.threads > 0 {
                    tch::set_num_threads(config.threads);
                }
                let loaded = catch_unwind(AssertUnwindSafe(|| load_models(&config.device, &specs, max_batch, config.precision)))
                    .unwrap_or_else(|p| {
                        Err(DeviceError::Load {
                            name: "?".into(),
                            version: "?".into(),
                            path: "?".into(),
                            message: panic_message(&p),
                        })
                    });
                match loaded {
                    Ok((device, models, slowest_pass)) => {
                        let bound = DeviceWatch::bound_for(config.max_pass_seconds, slowest_pass);
                        thread_watch.set_bound(bound, slowest_pass);
                        let infos: Vec<ModelInfo> = models.iter().map(|m| m.info.clone()).collect();
                        let _ = ready_tx.send(Ok((device_name(device), infos)));
                        serve(rx, &models, max_batch, &thread_watch);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| DeviceError::Torch(format!("cannot start the device thread: {e}")))?;
        let (device, infos) = ready_rx.recv().map_err(|_| DeviceError::Stopped(device_label))??;
        tracing::info!(
            device = %device,
            models = infos.len(),
            max_batch,
            slowest_warm_up_pass_ms = watch.slowest_warm_up_pass().as_millis() as u64,
            watchdog_bound_s = watch.bound().as_secs_f64(),
            "device worker ready"
        );
        Ok(DeviceWorker { tx, device, models: Arc::new(infos), max_batch, watch })
    }

    /// A worker whose device is the other end of a channel: the batcher's tests play the device themselves.
    #[cfg(test)]
    pub(crate) fn fake(max_batch: usize) -> (DeviceWorker, mpsc::Receiver<Batch>) {
        let (tx, rx) = mpsc::channel::<Batch>(1);
        let watch = Arc::new(DeviceWatch::new("fake", Duration::from_secs(60)));
        (DeviceWorker { tx, device: "fake".into(), models: Arc::new(Vec::new()), max_batch, watch }, rx)
    }


    /// Reserves the worker's single slot (waits while a batch is waiting to start).
    pub async fn reserve(&self) -> Result<mpsc::Permit<'_, Batch>, DeviceError> {
        self.tx.reserve().await.map_err(|_| DeviceError::Stopped(self.device.clone()))
    }

}

/// Finds the models under `dir`: `dir` itself when it holds a `config.json` (named after the folder), otherwise
/// each subfolder `<name>/` holding one, or `<name>/<version>/` holding one. A model's version is its version
/// folder's name, else the first line of a `VERSION` file beside `config.json`, else `1`.
pub fn discover_models(dir: &Path) -> std::io::Result<Vec<ModelSpec>> {
    fn version_of(model_dir: &Path) -> String {
        std::fs::read_to_string(model_dir.join("VERSION"))
            .ok()
            .and_then(|s| s.lines().next().map(|l| l.trim().to_string()))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "1".to_string())
    }
    fn name_of(p: &Path) -> String {
        p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into())
    }
    let dir = dir.canonicalize()?;
    if dir.join("config.json").is_file() {
        return Ok(vec![ModelSpec { name: name_of(&dir), version: version_of(&dir), path: dir.clone() }]);
    }
    let mut found = BTreeMap::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for sub in entries.into_iter().filter(|p| p.is_dir()) {
        if sub.join("config.json").is_file() {
            let spec = ModelSpec { name: name_of(&sub), version: version_of(&sub), path: sub.clone() };
            found.insert((spec.name.clone(), spec.version.clone()), spec);
            continue;
        }
        let mut versions: Vec<PathBuf> = std::fs::read_dir(&sub)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
        versions.sort();
        for v in versions.into_iter().filter(|p| p.join("config.json").is_file()) {
            let spec = ModelSpec { name: name_of(&sub), version: name_of(&v), path: v.clone() };
            found.insert((spec.name.clone(), spec.version.clone()), spec);
        }
    }
    Ok(found.into_values().collect())
}
