//! The studio's model thread: one OS thread owns the models (as the device worker does) and a bounded cache of
//! encoded faces, so a slider move costs one decode. Requests come over a channel and are answered on a oneshot;
//! a request whose asker has gone (a newer slider value replaced it, the page aborted the fetch) is dropped
//! unanswered before any work.
//!
//! The arithmetic is `glowd edit`'s, call for call: one image encoded as a batch of one, the directions added with
//! [`directions::shift`], decoded as a batch of one; so an edit here is `glowd edit`'s output bit for bit.
use crate::codec::image::Pixels;
use crate::model::batch::{pixels_to_tensor, tensor_to_pixels};
use crate::model::device::{device_name, parse_device};
use crate::model::directions::{self, Directions};
use crate::model::Glow;
use crate::precision::Precision;
use crate::worker::{ModelInfo, ModelSpec};
use std::collections::{HashMap, VecDeque};
use std::sync::mpsc;
use std::sync::Arc;
use tch::Tensor;
use tokio::sync::oneshot;

/// Encoded faces kept (latents of a 64x64 RGB face are 48 KiB of floats).
const CACHED_FACES: usize = 256;

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    /// Not uploaded, or evicted from the cache: the page uploads it again.
    #[error("face {0} is not loaded (upload it again)")]
    UnknownFace(String),
    #[error("{0}")]
    Input(String),
    /// The decode came out non-finite: the edit is too far from the data for this model and this face.
    #[error("{0}")]
    NonFinite(String),
    #[error("model error: {0}")]
    Model(String),
    #[error("the studio's model thread has stopped")]
    Stopped,
}

type Reply<T> = oneshot::Sender<Result<T, EngineError>>;

/// An encoded face: its fitted pixels, latents and bits/dim.
struct Face {
    pixels: Pixels,
    z: Vec<Tensor>,
    bits_per_dim: f64,
}

enum Request {
    Encode { model: usize, face: String, pixels: Pixels, reply: Reply<f64> },
    Original { model: usize, face: String, reply: Reply<(Pixels, f64)> },
    Edit { model: usize, face: String, edits: Vec<(String, f64)>, reply: Reply<Pixels> },
    Interpolate { model: usize, a: String, b: String, t: f64, reply: Reply<Pixels> },
    Sample { model: usize, n: usize, temperatures: Vec<f64>, seed: u64, reply: Reply<Vec<Pixels>> },
}

impl Request {
    fn abandoned(&self) -> bool {
        match self {
            Request::Encode { reply, .. } => reply.is_closed(),
            Request::Original { reply, .. } => reply.is_closed(),
            Request::Edit { reply, .. } | Request::Interpolate { reply, .. } => reply.is_closed(),
            Request::Sample { reply, .. } => reply.is_closed(),
        }
    }
}

struct Loaded {
    glow: Glow,
    directions: Option<Directions>,
}

/// A handle on the model thread. Cloning shares the thread; it stops when the last handle is dropped.
#[derive(Clone)]
pub struct Engine {
    tx: mpsc::Sender<Request>,
    pub models: Arc<Vec<ModelInfo>>,
    /// The device the models run on (`cpu`, `cuda:0`).
    pub device: String,
}

impl Engine {
    /// Loads every model on a thread of its own and returns once they are ready (or the first load error).
    pub fn start(specs: Vec<ModelSpec>, device: &str, threads: i32, precision: Precision) -> Result<Engine, String> {
        let (tx, rx) = mpsc::channel::<Request>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let device = device.to_string();
        std::thread::Builder::new()
            .name("glowd-studio-model".into())
            .spawn(move || {
                crate::model::device::flush_denormals();
                if threads > 0 {
                    tch::set_num_threads(threads);
                }
                match load(&specs, &device, precision) {
                    Ok((dev, loaded, infos)) => {
                        let _ = ready_tx.send(Ok((dev, infos)));
                        serve(rx, &loaded);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| format!("cannot start the model thread: {e}"))?;
        let (device, infos) = ready_rx.recv().map_err(|_| "the model thread stopped while loading".to_string())??;
        Ok(Engine { tx, models: Arc::new(infos), device })
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, EngineError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(make(reply)).map_err(|_| EngineError::Stopped)?;
        answer.await.map_err(|_| EngineError::Stopped)?
    }

    /// Encodes a face (fitted pixels) and keeps its latents under `face`; returns its bits/dim.
    pub async fn encode(&self, model: usize, face: &str, pixels: Pixels) -> Result<f64, EngineError> {
        self.ask(|reply| Request::Encode { model, face: face.to_string(), pixels, reply }).await
    }

    /// A loaded face's fitted pixels and bits/dim.
    pub async fn original(&self, model: usize, face: &str) -> Result<(Pixels, f64), EngineError> {
        self.ask(|reply| Request::Original { model, face: face.to_string(), reply }).await
    }

    /// The face with `Σ strength·direction` added, decoded.
    pub async fn edit(&self, model: usize, face: &str, edits: Vec<(String, f64)>) -> Result<Pixels, EngineError> {
        self.ask(|reply| Request::Edit { model, face: face.to_string(), edits, reply }).await
    }

    /// The frame `(1 − t)·z_a + t·z_b`.
    pub async fn interpolate(&self, model: usize, a: &str, b: &str, t: f64) -> Result<Pixels, EngineError> {
        self.ask(|reply| Request::Interpolate { model, a: a.to_string(), b: b.to_string(), t, reply }).await
    }

    /// `n` samples (the same as `glowd sample --seed`), one temperature per level.
    pub async fn sample(&self, model: usize, n: usize, temperatures: Vec<f64>, seed: u64) -> Result<Vec<Pixels>, EngineError> {
        self.ask(|reply| Request::Sample { model, n, temperatures, seed, reply }).await
    }
}

fn load(specs: &[ModelSpec], device: &str, precision: Precision) -> Result<(String, Vec<Loaded>, Vec<ModelInfo>), String> {
    let dev = parse_device(device).map_err(|e| e.to_string())?;
    let mut loaded = Vec::new();
    let mut infos = Vec::new();
    for spec in specs {
        let fail = |e: String| format!("model {} {} ({}): {e}", spec.name, spec.version, spec.path.display());
        let (glow, directions, info) = crate::worker::load_model(spec, dev, precision).map_err(fail)?;
        infos.push(info);
        loaded.push(Loaded { glow, directions });
    }
    Ok((device_name(dev), loaded, infos))
}

/// The model thread's loop: each request in turn, skipping those nobody waits for any more.
fn serve(rx: mpsc::Receiver<Request>, models: &[Loaded]) {
    let _guard = tch::no_grad_guard();
    let mut cache: HashMap<(usize, String), Face> = HashMap::new();
    let mut order: VecDeque<(usize, String)> = VecDeque::new();
    while let Ok(request) = rx.recv() {
        if request.abandoned() {
            continue;
        }
        let model = |m: usize| models.get(m).ok_or_else(|| EngineError::Input(format!("no model #{m}")));
        // Panics in torch code answer the request with an error; the thread lives on.
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match request {
            Request::Encode { model: m, face: id, pixels, reply } => {
                let result = model(m).and_then(|l| encode(&l.glow, pixels)).map(|f| {
                    let bpd = f.bits_per_dim;
                    let key = (m, id);
                    if cache.insert(key.clone(), f).is_none() {
                        order.push_back(key);
                        while order.len() > CACHED_FACES {
                            if let Some(old) = order.pop_front() {
                                cache.remove(&old);
                            }
                        }
                    }
                    bpd
                });
                let _ = reply.send(result);
            }
            Request::Original { model: m, face: id, reply } => {
                let result = cache
                    .get(&(m, id.clone()))
                    .map(|f| (f.pixels.clone(), f.bits_per_dim))
                    .ok_or(EngineError::UnknownFace(id));
                let _ = reply.send(result);
            }
            Request::Edit { model: m, face: id, edits, reply } => {
                let result = model(m).and_then(|l| {
                    let f = cache.get(&(m, id.clone())).ok_or_else(|| EngineError::UnknownFace(id.clone()))?;
                    edit(l, &f.z, &edits)
                });
                let _ = reply.send(result);
            }
            Request::Interpolate { model: m, a, b, t, reply } => {
                let result = model(m).and_then(|l| {
                    let fa = cache.get(&(m, a.clone())).ok_or_else(|| EngineError::UnknownFace(a.clone()))?;
                    let fb = cache.get(&(m, b.clone())).ok_or_else(|| EngineError::UnknownFace(b.clone()))?;
                    decode_one(&l.glow, &directions::interpolate(&fa.z, &fb.z, t), || {
                        format!("frame t = {t:.2} is outside what this model can draw")
                    })
                });
                let _ = reply.send(result);
            }
            Request::Sample { model: m, n, temperatures, seed, reply } => {
                let result = model(m).and_then(|l| {
                    l.glow.sample(n as i64, &temperatures, seed).map(|t| tensor_to_pixels(&t)).map_err(|e| EngineError::Input(e.to_string()))
                });
                let _ = reply.send(result);
            }
        }));
        if let Err(p) = run {
            let message = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
            tracing::error!(panic = message.as_deref().unwrap_or("?"), "studio model thread: a request panicked");
        }
    }
}

/// One face encoded as a batch of one, as `glowd edit` encodes a lone image.
fn encode(glow: &Glow, pixels: Pixels) -> Result<Face, EngineError> {
    let latents = glow.encode(&pixels_to_tensor(std::slice::from_ref(&pixels))).map_err(|e| EngineError::Input(e.to_string()))?;
    let bits_per_dim = latents.bits_per_dim(&glow.config)[0];
    Ok(Face { pixels, z: latents.z, bits_per_dim })
}

fn edit(model: &Loaded, z: &[Tensor], edits: &[(String, f64)]) -> Result<Pixels, EngineError> {
    let active: Vec<&(String, f64)> = edits.iter().filter(|(_, s)| *s != 0.0).collect();
    let pairs: Vec<(&Vec<Tensor>, f64)> = if active.is_empty() {
        vec![]
    } else {
        let dirs = model.directions.as_ref().ok_or_else(|| EngineError::Input("this model has no attribute directions".into()))?;
        active.iter().map(|(a, s)| dirs.get(a).map(|d| (d, *s)).map_err(|e| EngineError::Input(e.to_string()))).collect::<Result<_, _>>()?
    };
    decode_one(&model.glow, &directions::shift(z, &pairs), || {
        let mut by_size = active.clone();
        by_size.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
        let named: Vec<String> = by_size.iter().map(|(a, s)| format!("{a} {s:+.2}")).collect();
        format!("{} is outside what this model can draw for this face", named.join(", "))
    })
}

/// Decodes one latent; non-finite output is an error with the caller's message, never a black picture.
fn decode_one(glow: &Glow, z: &[Tensor], why: impl FnOnce() -> String) -> Result<Pixels, EngineError> {
    let (pixels, finite) = glow.decode_checked(z).map_err(|e| EngineError::Model(e.to_string()))?;
    if !finite.first().copied().unwrap_or(false) {
        return Err(EngineError::NonFinite(why()));
    }
    Ok(tensor_to_pixels(&pixels).remove(0))
}
