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
//! op at once from the op's own seed, so their results never depend on what else was in the batch; encode and
//! decode passes never run at batch size one (see `encode_chunked`), so neither do theirs.
use crate::imageio::Pixels;
use crate::model::batch::{pixels_to_tensor, tensor_to_pixels};
use crate::model::device::{device_name, parse_device};
use crate::model::directions::{self, model_fingerprint, Directions};
use crate::model::{Disposition, Glow, ModelError};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{Device, Tensor};
use tokio::sync::{mpsc, oneshot};

/// Where a model lives and what jobs call it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    pub name: String,
    pub version: String,
    pub path: PathBuf,
}

/// What the pipeline knows about a loaded model: plain data, no tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
    pub image_size: u32,
    pub channels: u8,
    pub levels: usize,
    /// Per level, finest first: (channels, height, width) of one image's latent.
    pub latent_shapes: Vec<[usize; 3]>,
    /// Attribute directions available for edit and augment jobs.
    pub attributes: Vec<String>,
    /// Hex fingerprint of the weights file (the manifest records it).
    pub fingerprint: String,
}

/// One image's latent: per level, finest first, the `(c, h, w)` values row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct LatentData {
    pub levels: Vec<([usize; 3], Vec<f32>)>,
}

/// Work for the device, in plain data. Attribute names, level counts and temperatures are checked by the pipeline
/// before an op is sent; the worker checks them again and answers [`DeviceError::Input`] if they do not fit.
#[derive(Debug, Clone)]
pub enum DeviceOp {
    /// Latents and bits/dim of one image.
    Encode { image: Pixels },
    /// Encode, add `Σ strength·direction`, decode. `latents`: also return the edited latent.
    Edit { image: Pixels, edits: Vec<(String, f64)>, latents: bool },
    /// One decode per variant: the attribute mix of that variant, then the coarsest `keep_levels` levels kept and
    /// the finer ones redrawn at `temperatures` (one per level, finest first) from `seed`.
    Augment { image: Pixels, variants: Vec<Vec<(String, f64)>>, keep_levels: usize, temperatures: Vec<f64>, seed: u64 },
    /// `frames` decodes of `(1 − t)·z_a + t·z_b`, t from 0 to 1.
    Interpolate { a: Pixels, b: Pixels, frames: usize },
    /// `n` samples at `temperatures` from `seed` (the same as `glowd sample --seed`).
    Sample { n: usize, temperatures: Vec<f64>, seed: u64 },
}

impl DeviceOp {
    /// Images in this op's largest forward pass: what the batch budget counts (a batch of edits runs one encode
    /// and one decode pass of that many images).
    pub fn cost(&self) -> usize {
        match self {
            DeviceOp::Encode { .. } | DeviceOp::Edit { .. } => 1,
            DeviceOp::Augment { variants, .. } => variants.len().max(1),
            DeviceOp::Interpolate { frames, .. } => (*frames).max(2),
            DeviceOp::Sample { n, .. } => (*n).max(1),
        }
    }
}

/// What an op produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceOutput {
    /// Decoded images, in the op's order (edited image, variants, frames, samples).
    pub images: Vec<Pixels>,
    /// Encode: the latent; edit with `latents`: the edited latent.
    pub latents: Option<LatentData>,
    /// Bits/dim of each input image.
    pub bits_per_dim: Vec<f64>,
}

/// Why an op failed. `Clone`, so one failure of a batch answers all its ops.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DeviceError {
    /// The op does not fit the model (a DeadLetter: the same op will fail again).
    #[error("{0}")]
    Input(String),
    /// A torch error while running the batch: perhaps transient (out of memory), retried.
    #[error("device error: {0}")]
    Torch(String),
    #[error("device worker panicked while running a batch: {0}")]
    Panicked(String),
    /// The worker is gone (it failed to start, or the pipeline is shutting down).
    #[error("device worker {0} is not running")]
    Stopped(String),
    #[error("unknown model {0}")]
    UnknownModel(String),
    /// Decoding gave non-finite values (an edit or mix too strong for the model): a DeadLetter, since the same
    /// op gives the same overflow; without this check the image would silently come out black.
    #[error("{0}")]
    NonFinite(String),
    /// Loading a model failed: the daemon must not start.
    #[error("loading model {name} {version} from {path}: {message}")]
    Load { name: String, version: String, path: String, message: String },
}

impl DeviceError {
    pub fn disposition(&self) -> Disposition {
        match self {
            DeviceError::Input(_) | DeviceError::UnknownModel(_) | DeviceError::NonFinite(_) => Disposition::DeadLetter,
            DeviceError::Torch(_) | DeviceError::Panicked(_) => Disposition::Retry,
            DeviceError::Stopped(_) | DeviceError::Load { .. } => Disposition::Fatal,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            DeviceError::Input(_) => "invalid_for_model",
            DeviceError::Torch(_) => "device_error",
            DeviceError::Panicked(_) => "device_panic",
            DeviceError::Stopped(_) => "device_stopped",
            DeviceError::UnknownModel(_) => "unknown_model",
            DeviceError::NonFinite(_) => "non_finite_output",
            DeviceError::Load { .. } => "model_load",
        }
    }
}

impl From<ModelError> for DeviceError {
    fn from(e: ModelError) -> Self {
        match e.disposition() {
            Disposition::DeadLetter => DeviceError::Input(e.to_string()),
            _ => DeviceError::Torch(e.to_string()),
        }
    }
}

pub type OpResult = Result<DeviceOutput, DeviceError>;

/// One op and where its answer goes.
pub struct BatchItem {
    pub op: DeviceOp,
    pub reply: oneshot::Sender<OpResult>,
}

/// Ops for one model, run together.
pub struct Batch {
    /// Index into the worker's models (the order of [`DeviceWorker::models`]).
    pub model: usize,
    pub items: Vec<BatchItem>,
}

/// Settings of a device worker.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    pub device: String,
    /// Torch CPU threads (0: torch's default). Process-wide in libtorch.
    pub threads: i32,
    /// Largest number of images in one forward pass; the warm-up runs at this size.
    pub max_batch: usize,
}

/// A running device thread. Dropping every clone of its sender stops the thread after the batch in hand.
#[derive(Clone)]
pub struct DeviceWorker {
    /// Capacity 1: a batcher reserves the slot once it has an op, then takes whatever else is queued, so batches
    /// grow while the device is busy (a pull batcher).
    tx: mpsc::Sender<Batch>,
    pub device: String,
    pub models: Arc<Vec<ModelInfo>>,
    pub max_batch: usize,
}

impl DeviceWorker {
    /// Starts the thread, loads and warms up every model on it, and returns once it is ready (or the first load
    /// error).
    pub fn spawn(config: WorkerConfig, specs: Vec<ModelSpec>) -> Result<DeviceWorker, DeviceError> {
        let (tx, rx) = mpsc::channel::<Batch>(1);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let device_label = config.device.clone();
        let max_batch = config.max_batch.max(1);
        std::thread::Builder::new()
            .name(format!("glowd-device-{device_label}"))
            .spawn(move || {
                crate::cli::flush_denormals();
                if config.threads > 0 {
                    tch::set_num_threads(config.threads);
                }
                let loaded = catch_unwind(AssertUnwindSafe(|| load_models(&config.device, &specs, max_batch)))
                    .unwrap_or_else(|p| {
                        Err(DeviceError::Load {
                            name: "?".into(),
                            version: "?".into(),
                            path: "?".into(),
                            message: panic_message(&p),
                        })
                    });
                match loaded {
                    Ok((device, models)) => {
                        let infos: Vec<ModelInfo> = models.iter().map(|m| m.info.clone()).collect();
                        let _ = ready_tx.send(Ok((device_name(device), infos)));
                        serve(rx, &models, max_batch);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| DeviceError::Torch(format!("cannot start the device thread: {e}")))?;
        let (device, infos) = ready_rx.recv().map_err(|_| DeviceError::Stopped(device_label))??;
        tracing::info!(device = %device, models = infos.len(), max_batch, "device worker ready");
        Ok(DeviceWorker { tx, device, models: Arc::new(infos), max_batch })
    }

    /// A worker whose device is the other end of a channel: the batcher's tests play the device themselves.
    #[cfg(test)]
    pub(crate) fn fake(max_batch: usize) -> (DeviceWorker, mpsc::Receiver<Batch>) {
        let (tx, rx) = mpsc::channel::<Batch>(1);
        (DeviceWorker { tx, device: "fake".into(), models: Arc::new(Vec::new()), max_batch }, rx)
    }

    /// Index of a model by name and version.
    pub fn model_index(&self, name: &str, version: &str) -> Option<usize> {
        self.models.iter().position(|m| m.name == name && m.version == version)
    }

    /// Reserves the worker's single slot (waits while a batch is waiting to start).
    pub async fn reserve(&self) -> Result<mpsc::Permit<'_, Batch>, DeviceError> {
        self.tx.reserve().await.map_err(|_| DeviceError::Stopped(self.device.clone()))
    }

    /// Runs one op alone (tests and tools; the pipeline goes through its batcher).
    pub async fn run(&self, model: usize, op: DeviceOp) -> OpResult {
        let (reply, rx) = oneshot::channel();
        self.reserve().await?.send(Batch { model, items: vec![BatchItem { op, reply }] });
        rx.await.map_err(|_| DeviceError::Stopped(self.device.clone()))?
    }
}

struct LoadedModel {
    glow: Glow,
    directions: Option<Directions>,
    info: ModelInfo,
}

fn load_models(device: &str, specs: &[ModelSpec], max_batch: usize) -> Result<(Device, Vec<LoadedModel>), DeviceError> {
    let device = parse_device(device).map_err(|e| DeviceError::Load {
        name: "-".into(),
        version: "-".into(),
        path: "-".into(),
        message: e.to_string(),
    })?;
    let mut out = Vec::new();
    for spec in specs {
        let fail = |m: String| DeviceError::Load {
            name: spec.name.clone(),
            version: spec.version.clone(),
            path: spec.path.display().to_string(),
            message: m,
        };
        let glow = Glow::load(&spec.path, device).map_err(|e| fail(e.to_string()))?;
        let directions = Directions::load(&spec.path, &glow.config).map_err(|e| fail(e.to_string()))?;
        let fingerprint = model_fingerprint(&spec.path).map_err(|e| fail(e.to_string()))?;
        let c = &glow.config;
        let info = ModelInfo {
            name: spec.name.clone(),
            version: spec.version.clone(),
            image_size: c.image_size as u32,
            channels: c.channels as u8,
            levels: c.levels as usize,
            latent_shapes: c.latent_shapes().iter().map(|&(a, b, d)| [a as usize, b as usize, d as usize]).collect(),
            attributes: directions.as_ref().map(|d| d.vectors.keys().cloned().collect()).unwrap_or_default(),
            fingerprint: fingerprint.rsplit(':').next().unwrap_or(&fingerprint).to_string(),
        };
        // Warm-up at the largest batch: allocations and kernel choices happen now, not on the first job, and a
        // batch size the device cannot hold fails here instead of in service.
        let s = c.image_size;
        let pixels = Tensor::zeros([max_batch as i64, c.channels, s, s], (tch::Kind::Uint8, Device::Cpu));
        let warm = catch_unwind(AssertUnwindSafe(|| -> Result<(), ModelError> {
            let z = glow.encode(&pixels)?;
            let _ = glow.decode(&z.z)?;
            Ok(())
        }));
        match warm {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(fail(format!("warm-up at batch {max_batch}: {e}"))),
            Err(p) => return Err(fail(format!("warm-up at batch {max_batch}: {}", panic_message(&p)))),
        }
        tracing::info!(model = %spec.name, version = %spec.version, path = %spec.path.display(),
            attributes = info.attributes.len(), "model loaded");
        out.push(LoadedModel { glow, directions, info });
    }
    Ok((device, out))
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.lines().next().unwrap_or("").to_string()
    } else {
        "unknown panic".into()
    }
}

fn serve(mut rx: mpsc::Receiver<Batch>, models: &[LoadedModel], max_batch: usize) {
    let _guard = tch::no_grad_guard();
    while let Some(batch) = rx.blocking_recv() {
        let Some(model) = models.get(batch.model) else {
            let e = DeviceError::UnknownModel(format!("#{}", batch.model));
            for item in batch.items {
                let _ = item.reply.send(Err(e.clone()));
            }
            continue;
        };
        let ops: Vec<DeviceOp> = batch.items.iter().map(|i| i.op.clone()).collect();
        let results = match catch_unwind(AssertUnwindSafe(|| run_batch(model, &ops, max_batch))) {
            Ok(Ok(results)) => results,
            Ok(Err(e)) => vec![Err(e); ops.len()],
            Err(p) => {
                let e = DeviceError::Panicked(panic_message(&p));
                tracing::error!(error = %e, "device batch panicked");
                vec![Err(e); ops.len()]
            }
        };
        for (item, result) in batch.items.into_iter().zip(results) {
            // The job may have given up waiting (shutdown): nothing to do then.
            let _ = item.reply.send(result);
        }
    }
}

/// Runs a batch; a batch-wide failure (torch error) is the outer `Err`, a per-op one (bad attribute) an inner one.
fn run_batch(model: &LoadedModel, ops: &[DeviceOp], max_batch: usize) -> Result<Vec<OpResult>, DeviceError> {
    let glow = &model.glow;
    // 1. One encode pass over every input image of the batch.
    let mut inputs: Vec<&Pixels> = Vec::new();
    for op in ops {
        match op {
            DeviceOp::Encode { image } | DeviceOp::Edit { image, .. } | DeviceOp::Augment { image, .. } => {
                inputs.push(image)
            }
            DeviceOp::Interpolate { a, b, .. } => {
                inputs.push(a);
                inputs.push(b);
            }
            DeviceOp::Sample { .. } => {}
        }
    }
    let (z_all, bpd_all) = encode_chunked(glow, &inputs, max_batch)?;
    // 2. Per op: latent arithmetic; edit decodes are collected into one decode pass.
    let mut results: Vec<Option<OpResult>> = (0..ops.len()).map(|_| None).collect();
    let mut edit_z: Vec<Vec<Tensor>> = Vec::new();
    let mut edit_ops: Vec<usize> = Vec::new();
    let mut next = 0usize;
    let mut take = |n: usize| {
        let start = next;
        next += n;
        start
    };
    for (i, op) in ops.iter().enumerate() {
        match op {
            DeviceOp::Encode { .. } => {
                let r = take(1);
                results[i] = Some(Ok(DeviceOutput {
                    images: vec![],
                    latents: Some(latent_data(&select(&z_all, r))),
                    bits_per_dim: vec![bpd_all[r]],
                }));
            }
            DeviceOp::Edit { edits, .. } => {
                let r = take(1);
                match resolve(model, edits) {
                    Ok(dirs) => {
                        let pairs: Vec<(&Vec<Tensor>, f64)> = dirs.iter().map(|(d, s)| (*d, *s)).collect();
                        edit_z.push(directions::shift(&select(&z_all, r), &pairs));
                        edit_ops.push(i);
                        results[i] = Some(Ok(DeviceOutput { bits_per_dim: vec![bpd_all[r]], ..Default::default() }));
                    }
                    Err(e) => results[i] = Some(Err(e)),
                }
            }
            DeviceOp::Augment { variants, keep_levels, temperatures, seed, .. } => {
                let r = take(1);
                results[i] = Some(
                    augment(model, &select(&z_all, r), variants, *keep_levels, temperatures, *seed)
                        .map(|images| DeviceOutput { images, latents: None, bits_per_dim: vec![bpd_all[r]] }),
                );
            }
            DeviceOp::Interpolate { frames, .. } => {
                let r = take(2);
                let (za, zb) = (select(&z_all, r), select(&z_all, r + 1));
                let frames = (*frames).max(2);
                let zs: Vec<Vec<Tensor>> =
                    (0..frames).map(|k| directions::interpolate(&za, &zb, k as f64 / (frames - 1) as f64)).collect();
                let images = decode_chunked(glow, &zs, max_batch)?.into_iter().collect::<Result<Vec<_>, _>>();
                results[i] = Some(images.map(|images| DeviceOutput {
                    images,
                    latents: None,
                    bits_per_dim: vec![bpd_all[r], bpd_all[r + 1]],
                }));
            }
            DeviceOp::Sample { n, temperatures, seed } => {
                results[i] = Some(
                    check_temperatures(model, temperatures)
                        .and_then(|()| Ok(glow.sample(*n as i64, temperatures, *seed)?))
                        .map(|t| DeviceOutput { images: tensor_to_pixels(&t), ..Default::default() }),
                );
            }
        }
    }
    // 3. The edit decodes, together.
    if !edit_z.is_empty() {
        let images = decode_chunked(glow, &edit_z, max_batch)?;
        for ((i, image), z) in edit_ops.iter().zip(images).zip(&edit_z) {
            let image = match image {
                Ok(image) => image,
                Err(e) => {
                    results[*i] = Some(Err(e));
                    continue;
                }
            };
            if let Some(Ok(out)) = &mut results[*i] {
                out.images = vec![image];
                if matches!(&ops[*i], DeviceOp::Edit { latents: true, .. }) {
                    out.latents = Some(latent_data(z));
                }
            }
        }
    }
    Ok(results.into_iter().map(|r| r.expect("every op answered")).collect())
}

/// Row `r` of every level.
fn select(z: &[Tensor], r: usize) -> Vec<Tensor> {
    z.iter().map(|t| t.narrow(0, r as i64, 1)).collect()
}

/// Encodes in chunks of `max_batch`. A chunk of one image is padded to two: measured on this project's CPU build
/// (libtorch 2.13, oneDNN), an image's latents are bitwise the same in every batch of two or more and at every
/// position, but a batch of one takes another kernel path and differs in the last bits. Padding makes every
/// output independent of what else happened to share its batch, so a redone job writes identical bytes.
fn encode_chunked(glow: &Glow, inputs: &[&Pixels], max_batch: usize) -> Result<(Vec<Tensor>, Vec<f64>), DeviceError> {
    if inputs.is_empty() {
        return Ok((vec![], vec![]));
    }
    let mut levels: Vec<Vec<Tensor>> = (0..glow.config.levels).map(|_| Vec::new()).collect();
    let mut bpd = Vec::with_capacity(inputs.len());
    for chunk in inputs.chunks(max_batch.max(1)) {
        let mut owned: Vec<Pixels> = chunk.iter().map(|p| (*p).clone()).collect();
        let padded = owned.len() == 1;
        if padded {
            owned.push(owned[0].clone());
        }
        let latents = glow.encode(&pixels_to_tensor(&owned))?;
        let keep = chunk.len() as i64;
        bpd.extend(latents.bits_per_dim(&glow.config).into_iter().take(chunk.len()));
        for (l, z) in latents.z.into_iter().enumerate() {
            levels[l].push(if padded { z.narrow(0, 0, keep) } else { z });
        }
    }
    let z = levels.iter().map(|parts| Tensor::cat(parts, 0)).collect();
    Ok((z, bpd))
}

/// Decodes a list of one-image latents in chunks of `max_batch`; an image that came out non-finite is an error of
/// its own op only, not of the batch.
fn decode_chunked(
    glow: &Glow,
    zs: &[Vec<Tensor>],
    max_batch: usize,
) -> Result<Vec<Result<Pixels, DeviceError>>, DeviceError> {
    let mut out = Vec::with_capacity(zs.len());
    for chunk in zs.chunks(max_batch.max(1)) {
        // A lone latent is decoded twice over, for the reason `encode_chunked` pads.
        let rows: Vec<&Vec<Tensor>> =
            if chunk.len() == 1 { vec![&chunk[0], &chunk[0]] } else { chunk.iter().collect() };
        let levels: Vec<Tensor> = (0..glow.config.levels as usize)
            .map(|l| Tensor::cat(&rows.iter().map(|z| z[l].shallow_clone()).collect::<Vec<_>>(), 0))
            .collect();
        let (pixels, finite) = glow.decode_checked(&levels)?;
        out.extend(tensor_to_pixels(&pixels).into_iter().zip(finite).take(chunk.len()).map(|(p, ok)| {
            ok.then_some(p).ok_or_else(|| {
                DeviceError::NonFinite(
                    "decoding gave non-finite pixels: the edited latent is too far from the data for this model \
                     (use smaller strengths)"
                        .into(),
                )
            })
        }));
    }
    Ok(out)
}

fn resolve<'a>(model: &'a LoadedModel, edits: &[(String, f64)]) -> Result<Vec<(&'a Vec<Tensor>, f64)>, DeviceError> {
    if edits.is_empty() {
        return Ok(vec![]);
    }
    let dirs = model
        .directions
        .as_ref()
        .ok_or_else(|| DeviceError::Input(format!("model {} has no attribute directions", model.info.name)))?;
    edits.iter().map(|(a, s)| Ok((dirs.get(a).map_err(DeviceError::from)?, *s))).collect()
}

fn check_temperatures(model: &LoadedModel, t: &[f64]) -> Result<(), DeviceError> {
    if t.len() != model.info.levels {
        return Err(DeviceError::Input(format!(
            "{} temperatures for a model of {} levels",
            t.len(),
            model.info.levels
        )));
    }
    Ok(())
}

fn augment(
    model: &LoadedModel,
    z: &[Tensor],
    variants: &[Vec<(String, f64)>],
    keep_levels: usize,
    temperatures: &[f64],
    seed: u64,
) -> Result<Vec<Pixels>, DeviceError> {
    let levels = model.info.levels;
    if keep_levels == 0 || keep_levels > levels {
        return Err(DeviceError::Input(format!("keep_levels {keep_levels} is outside 1..={levels} for this model")));
    }
    check_temperatures(model, temperatures)?;
    if variants.is_empty() {
        return Ok(vec![]);
    }
    // Every variant's latent with its attribute mix; then the kept (coarsest) levels stacked over the variants.
    let mut shifted: Vec<Vec<Tensor>> = Vec::with_capacity(variants.len());
    for mix in variants {
        let dirs = resolve(model, mix)?;
        let pairs: Vec<(&Vec<Tensor>, f64)> = dirs.iter().map(|(d, s)| (*d, *s)).collect();
        shifted.push(directions::shift(z, &pairs));
    }
    let given: Vec<Option<Tensor>> = (0..levels)
        .map(|l| {
            (l >= levels - keep_levels)
                .then(|| Tensor::cat(&shifted.iter().map(|v| v[l].shallow_clone()).collect::<Vec<_>>(), 0))
        })
        .collect();
    let (pixels, finite) = model.glow.decode_partial_checked(&given, temperatures, seed)?;
    let mut images = tensor_to_pixels(&pixels);
    // A variant whose redrawn fine levels, added to its shifted coarse ones, overflow the inverse flow: redraw
    // that variant's noise from seeds derived from the job's (deterministic, so a redone job writes the same
    // bytes), a few times, before giving the job up as non-finite.
    for (v, ok) in finite.iter().enumerate() {
        if *ok {
            continue;
        }
        let one: Vec<Option<Tensor>> = given.iter().map(|g| g.as_ref().map(|t| t.narrow(0, v as i64, 1))).collect();
        let mut redrawn = None;
        for attempt in 1..=AUGMENT_REDRAWS {
            let (p, f) = model.glow.decode_partial_checked(&one, temperatures, redraw_seed(seed, v, attempt))?;
            if f[0] {
                redrawn = tensor_to_pixels(&p).pop();
                break;
            }
        }
        images[v] = redrawn.ok_or_else(|| {
            DeviceError::NonFinite(format!(
                "variant {v} decoded to non-finite pixels ({AUGMENT_REDRAWS} redraws too): its attribute mix is too \
                 far from the data for this model (narrow the strength ranges)"
            ))
        })?;
    }
    Ok(images)
}

/// Redraws of an augment variant's noise when it decodes to non-finite pixels.
const AUGMENT_REDRAWS: u64 = 4;

fn redraw_seed(seed: u64, variant: usize, attempt: u64) -> u64 {
    seed.wrapping_add(0x9E37_79B9_7F4A_7C15u64.wrapping_mul(attempt)).rotate_left(variant as u32 + 1)
}

fn latent_data(z: &[Tensor]) -> LatentData {
    LatentData {
        levels: z
            .iter()
            .map(|t| {
                let s = t.size();
                let shape = [s[s.len() - 3] as usize, s[s.len() - 2] as usize, s[s.len() - 1] as usize];
                (shape, crate::model::weights::tensor_to_f32(t))
            })
            .collect(),
    }
}

/// The strengths of each augment variant: for variant i, for each range in order, a uniform draw from
/// `[min, max]` out of a ChaCha stream seeded by the job's seed. Part of the output contract: the same seed gives
/// the same mixes.
pub fn augment_mixes(ranges: &[(String, f64, f64)], variants: usize, seed: u64) -> Vec<Vec<(String, f64)>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..variants)
        .map(|_| {
            ranges
                .iter()
                .map(|(a, lo, hi)| {
                    let u: f64 = rng.gen();
                    (a.clone(), lo + (hi - lo) * u)
                })
                .collect()
        })
        .collect()
}

/// The noise seed of an augment job's redrawn levels, derived from its seed so the strength draws and the noise
/// come from different streams.
pub fn augment_noise_seed(seed: u64) -> u64 {
    seed ^ 0x5DEE_CE66_D1CE_4E5B
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
