//! `glowd train`: maximum likelihood on dequantised images with Adam(ax), linear warm-up, gradient clipping, an EMA
//! of the weights (what gets exported), checkpoints that resume exactly, validation bits/dim, sample grids, a JSONL
//! metrics log and a training-curve PNG.
//!
//! Every random choice of a step (its batch, flips, dequantisation noise) is drawn from a ChaCha stream seeded by
//! (seed, step), so a resumed run sees exactly the batches and noise the uninterrupted run would have.
pub mod adam;
pub mod curve;
pub mod objective;

use crate::data::{hflip, Dataset};
use crate::codec::image::{self as imageio, Pixels};
use crate::model::batch::{pixels_to_tensor, tensor_to_pixels};
use crate::model::weights::{read_safetensors, tensor_from_f32, write_safetensors, CONFIG_FILE, WEIGHTS_FILE};
use crate::model::{Glow, GlowConfig, ModelError};
use adam::{Algorithm, Optimizer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tch::{Kind, Tensor};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("training diverged at step {step}: loss is {loss}")]
    Diverged { step: i64, loss: f64 },
    #[error("cannot resume: {0}")]
    Resume(String),
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::File { path: path.into(), message: e.to_string() }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainOptions {
    /// Total optimiser steps (a resumed run continues up to this).
    pub steps: i64,
    pub batch: usize,
    pub lr: f64,
    /// Steps of linear learning-rate warm-up from 0.
    pub warmup: i64,
    /// Maximum global gradient norm (0: no clipping).
    pub clip: f64,
    pub algorithm: Algorithm,
    /// EMA decay of the exported weights (None: export the raw weights).
    pub ema: Option<f64>,
    /// Images for the data-dependent ActNorm initialisation.
    pub init_batch: usize,
    pub eval_every: i64,
    pub sample_every: i64,
    pub checkpoint_every: i64,
    pub log_every: i64,
    pub hflip: bool,
    pub seed: u64,
    pub checkpoint_grads: bool,
    /// Validation images scored at each evaluation (the first N of the validation set).
    pub val_limit: usize,
    /// What the coupling networks compute in; the master weights, Adam's state, the loss and the log-determinants
    /// stay float32 whatever this is (a checkpoint resumes at either precision).
    #[serde(default)]
    pub precision: crate::precision::Precision,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointState {
    step: i64,
    elapsed_s: f64,
    options: TrainOptions,
    history: Vec<(i64, f64, Option<f64>)>,
}

/// What the exported model folder's `training.json` records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainingSummary {
    pub data: String,
    /// The held-out fraction of the fixed split (`--val-fraction`); `glowd eval --split validation
    /// --val-fraction F` scores the same images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_fraction: Option<f64>,
    pub train_images: usize,
    pub validation_images: usize,
    pub steps: i64,
    pub batch: usize,
    pub train_seconds: f64,
    pub images_per_second: f64,
    pub final_train_bits_per_dim: Option<f64>,
    pub final_validation_bits_per_dim: Option<f64>,
    pub ema: Option<f64>,
    pub command: String,
    pub device: String,
    pub glowd_version: String,
    pub options: TrainOptions,
}

pub struct Trainer<'a> {
    pub glow: Glow,
    pub train: &'a Dataset,
    pub val: &'a Dataset,
    pub opts: TrainOptions,
    pub out: PathBuf,
    pub data_name: String,
    /// Recorded in the summary (the split itself happens before the trainer sees the data).
    pub val_fraction: Option<f64>,
    pub quiet: bool,
    optimizer: Optimizer,
    ema: Option<BTreeMap<String, Tensor>>,
    step: i64,
    elapsed_before: f64,
    /// (step, mean train bits/dim since the previous point, validation bits/dim if evaluated then)
    history: Vec<(i64, f64, Option<f64>)>,
    epoch_order: (u64, Vec<usize>),
}

fn trainable(glow: &Glow) -> Vec<(String, Tensor)> {
    let mut vars: Vec<(String, Tensor)> =
        glow.vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

impl<'a> Trainer<'a> {
    /// A trainer for `glow`; with `resume`, restores the checkpoint under `out` (weights, EMA, optimiser, step).
    pub fn new(
        mut glow: Glow,
        train: &'a Dataset,
        val: &'a Dataset,
        opts: TrainOptions,
        out: &Path,
        resume: bool,
    ) -> Result<Trainer<'a>, TrainError> {
        std::fs::create_dir_all(out).map_err(|e| file_err(out, e))?;
        glow.invalidate_inference_cache();
        glow.set_precision(opts.precision);
        let mut state = None;
        if resume {
            let dir = checkpoint_dir(out).ok_or_else(|| TrainError::Resume(format!("no checkpoint in {}", out.display())))?;
            let config = Glow::read_config(&dir)?;
            if config != glow.config {
                return Err(TrainError::Resume(format!("{}: the checkpoint's config differs from this run's", dir.display())));
            }
            glow.load_weights(&dir.join(WEIGHTS_FILE))?;
            glow.invalidate_inference_cache();
            let text = std::fs::read_to_string(dir.join("state.json")).map_err(|e| file_err(&dir, e))?;
            state = Some((dir, serde_json::from_str::<CheckpointState>(&text).map_err(|e| TrainError::Resume(e.to_string()))?));
        }
        let optimizer = Optimizer::new(opts.algorithm, trainable(&glow));
        let mut trainer = Trainer {
            glow,
            train,
            val,
            opts,
            out: out.into(),
            data_name: String::new(),
            val_fraction: None,
            quiet: false,
            optimizer,
            ema: None,
            step: 0,
            elapsed_before: 0.0,
            history: vec![],
            epoch_order: (u64::MAX, vec![]),
        };
        match state {
            Some((dir, st)) => {
                let (opt_state, _) = read_safetensors(&dir.join("optimizer.safetensors"))?;
                let opt_state: BTreeMap<String, Tensor> =
                    opt_state.into_iter().map(|(k, (s, v))| (k, tensor_from_f32(&s, &v))).collect();
                trainer.optimizer.load_state(&opt_state, st.step).map_err(TrainError::Resume)?;
                if trainer.opts.ema.is_some() {
                    let (ema, _) = read_safetensors(&dir.join("ema.safetensors"))?;
                    trainer.ema = Some(
                        ema.into_iter()
                            .map(|(k, (s, v))| (k, tensor_from_f32(&s, &v).to_device(trainer.glow.device())))
                            .collect(),
                    );
                }
                trainer.step = st.step;
                trainer.elapsed_before = st.elapsed_s;
                trainer.history = st.history;
            }
            None => trainer.ema = trainer.opts.ema.map(|_| snapshot(&trainer.glow)),
        }
        Ok(trainer)
    }

    pub fn step(&self) -> i64 {
        self.step
    }

    /// Data-dependent ActNorm initialisation on the first `init_batch` training images (in the order of the
    /// first epoch), unless already initialised.
    pub fn initialize(&mut self) -> Result<(), TrainError> {
        if self.glow.actnorm_initialized() {
            return Ok(());
        }
        let n = self.opts.init_batch.min(self.train.len()).max(1);
        let order = epoch_order(self.opts.seed, 0, self.train.len());
        let images: Vec<Pixels> = order[..n].iter().map(|&i| self.train.images[i].clone()).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(self.opts.seed ^ 0x1417);
        let noise = uniform(&mut rng, &pixels_to_tensor(&images).size());
        let x = self.glow.pixels_to_input(&pixels_to_tensor(&images), Some(&noise))?;
        tch::no_grad(|| self.glow.forward_flow(&x, true));
        if let Some(ema) = &mut self.ema {
            *ema = snapshot(&self.glow);
        }
        Ok(())
    }

    fn batch_indices(&mut self, step: i64) -> Vec<usize> {
        let n = self.train.len();
        (0..self.opts.batch)
            .map(|b| {
                let j = step as u64 * self.opts.batch as u64 + b as u64;
                let epoch = j / n as u64;
                if self.epoch_order.0 != epoch {
                    self.epoch_order = (epoch, epoch_order(self.opts.seed, epoch, n));
                }
                self.epoch_order.1[(j % n as u64) as usize]
            })
            .collect()
    }

    fn lr_at(&self, step: i64) -> f64 {
        if self.opts.warmup <= 0 {
            return self.opts.lr;
        }
        self.opts.lr * ((step + 1) as f64 / self.opts.warmup as f64).min(1.0)
    }

    /// One optimiser step; returns (mean train bits/dim, gradient norm).
    pub fn train_step(&mut self) -> Result<(f64, f64), TrainError> {
        let step = self.step;
        let indices = self.batch_indices(step);
        let mut rng = ChaCha8Rng::seed_from_u64(self.opts.seed.wrapping_mul(0x9e37_79b9).wrapping_add(step as u64 + 1));
        let images: Vec<Pixels> = indices
            .iter()
            .map(|&i| {
                let img = &self.train.images[i];
                if self.opts.hflip && rng.gen_bool(0.5) {
                    hflip(img)
                } else {
                    img.clone()
                }
            })
            .collect();
        let pixels = pixels_to_tensor(&images);
        let noise = uniform(&mut rng, &pixels.size());
        let x = self.glow.pixels_to_input(&pixels, Some(&noise))?;
        self.optimizer.zero_grad();
        let bpd = objective::backward(&self.glow, &x, self.opts.checkpoint_grads);
        let loss = bpd.mean(Kind::Double).double_value(&[]);
        if !loss.is_finite() {
            return Err(TrainError::Diverged { step, loss });
        }
        let grad_norm = self.optimizer.clip_grad_norm(self.opts.clip);
        self.optimizer.step(self.lr_at(step));
        if let (Some(ema), Some(decay)) = (&mut self.ema, self.opts.ema) {
            // Early on the EMA would mostly remember the random init; ramp the decay up as in common practice.
            let decay = decay.min((1.0 + step as f64) / (10.0 + step as f64));
            tch::no_grad(|| {
                for (name, p) in trainable(&self.glow) {
                    let e = ema.get_mut(&name).expect("ema covers every variable");
                    let _ = e.g_mul_scalar_(decay);
                    let _ = e.g_add_(&(p.detach() * (1.0 - decay)));
                }
            });
        }
        self.step += 1;
        Ok((loss, grad_norm))
    }

    /// A model with the weights that get exported (EMA when enabled), in inference form.
    pub fn export_model(&self) -> Result<Glow, TrainError> {
        let mut glow = Glow::new(self.glow.config.clone(), self.glow.device(), 0)?;
        let source = match &self.ema {
            Some(ema) => ema.iter().map(|(k, v)| (k.clone(), v.shallow_clone())).collect(),
            None => snapshot(&self.glow),
        };
        tch::no_grad(|| {
            for (name, mut var) in glow.vs.variables() {
                var.copy_(&source[&name]);
            }
        });
        glow.prepare_inference();
        glow.set_precision(self.opts.precision);
        Ok(glow)
    }

    /// Mean validation bits/dim of the exported weights over the first `val_limit` validation images.
    pub fn validate(&self, model: &Glow) -> Result<Option<f64>, TrainError> {
        let n = self.val.len().min(self.opts.val_limit);
        if n == 0 {
            return Ok(None);
        }
        let mut all = Vec::with_capacity(n);
        for chunk in self.val.images[..n].chunks(self.opts.batch.max(1)) {
            all.extend(model.encode(&pixels_to_tensor(chunk))?.bits_per_dim(&model.config));
        }
        Ok(Some(all.iter().sum::<f64>() / all.len() as f64))
    }

    fn write_samples(&self, model: &Glow) -> Result<(), TrainError> {
        let dir = self.out.join("samples");
        for t in [0.7, 1.0] {
            let temps = vec![t; model.config.levels as usize];
            let pixels = model.sample(36, &temps, self.opts.seed)?;
            let path = dir.join(format!("step{:07}_t{t:.1}.png", self.step));
            imageio::save_png(&imageio::grid(&tensor_to_pixels(&pixels), 6), &path).map_err(|e| file_err(&path, e))?;
        }
        Ok(())
    }

    /// Saves the full training state under `out/checkpoint` (written beside it, then swapped in).
    pub fn checkpoint(&self, elapsed: f64) -> Result<(), TrainError> {
        let fresh = self.out.join("checkpoint.new");
        let _ = std::fs::remove_dir_all(&fresh);
        self.glow.save(&fresh)?;
        write_safetensors(&fresh.join("optimizer.safetensors"), &self.optimizer.state(), None)?;
        if let Some(ema) = &self.ema {
            write_safetensors(&fresh.join("ema.safetensors"), ema, None)?;
        }
        let state = CheckpointState {
            step: self.step,
            elapsed_s: elapsed,
            options: self.opts.clone(),
            history: self.history.clone(),
        };
        std::fs::write(fresh.join("state.json"), serde_json::to_string_pretty(&state).expect("serialises"))
            .map_err(|e| file_err(&fresh, e))?;
        let dir = self.out.join("checkpoint");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&fresh, &dir).map_err(|e| file_err(&dir, e))
    }

    /// Runs until `opts.steps` or until `stop` is raised; checkpoints and exports the model either way.
    pub fn run(&mut self, stop: &AtomicBool) -> Result<TrainingSummary, TrainError> {
        self.initialize()?;
        let metrics_path = self.out.join("metrics.jsonl");
        let mut metrics = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&metrics_path)
            .map_err(|e| file_err(&metrics_path, e))?;
        let started = Instant::now();
        let first_step = self.step;
        let bar = self.progress_bar();
        let (mut window_loss, mut window_n, mut window_start) = (0.0, 0usize, Instant::now());
        let mut last_train = None;
        let mut last_val = self.history.iter().rev().find_map(|h| h.2);
        while self.step < self.opts.steps && !stop.load(Ordering::SeqCst) {
            let (loss, grad_norm) = self.train_step()?;
            window_loss += loss;
            window_n += 1;
            let step = self.step;
            let ips = (window_n * self.opts.batch) as f64 / window_start.elapsed().as_secs_f64().max(1e-9);
            bar.set_position(step as u64);
            bar.set_message(format!("loss {loss:.3} bits/dim | {ips:.1} img/s"));
            let eval_now = step % self.opts.eval_every == 0 || step == self.opts.steps;
            let mut exported = None;
            if step % self.opts.log_every == 0 || eval_now {
                let mean = window_loss / window_n as f64;
                last_train = Some(mean);
                let mut record = serde_json::json!({
                    "step": step, "train_bits_per_dim": mean, "lr": self.lr_at(step - 1),
                    "grad_norm": grad_norm, "images_per_second": ips,
                    "elapsed_s": self.elapsed_before + started.elapsed().as_secs_f64(),
                });
                let mut val = None;
                if eval_now {
                    let model = self.export_model()?;
                    val = self.validate(&model)?;
                    last_val = val.or(last_val);
                    record["validation_bits_per_dim"] = serde_json::json!(val);
                    exported = Some(model);
                }
                self.history.push((step, mean, val));
                writeln!(metrics, "{record}").map_err(|e| file_err(&metrics_path, e))?;
                if self.quiet {
                    tracing::info!(target: "glowd::train", "{record}");
                }
                (window_loss, window_n, window_start) = (0.0, 0, Instant::now());
            }
            // Sample grids on their own schedule, whether or not this step also evaluates.
            if step % self.opts.sample_every == 0 || step == self.opts.steps {
                let model = match exported.take() {
                    Some(m) => m,
                    None => self.export_model()?,
                };
                self.write_samples(&model)?;
            }
            if step % self.opts.checkpoint_every == 0 {
                self.checkpoint(self.elapsed_before + started.elapsed().as_secs_f64())?;
            }
        }
        bar.finish_and_clear();
        self.finish(started, first_step, last_train, last_val)
    }

    /// A progress bar over the steps (hidden with `quiet`).
    fn progress_bar(&self) -> indicatif::ProgressBar {
        if self.quiet {
            return indicatif::ProgressBar::hidden();
        }
        let bar = indicatif::ProgressBar::new(self.opts.steps as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}")
                .expect("valid template"),
        );
        bar.set_position(self.step as u64);
        bar
    }

    /// After the last step: scores and exports the model, checkpoints, and writes `training.json` and the curve.
    fn finish(
        &mut self,
        started: Instant,
        first_step: i64,
        last_train: Option<f64>,
        mut last_val: Option<f64>,
    ) -> Result<TrainingSummary, TrainError> {
        // Score what gets exported at the step it is exported (a stop between evaluations would otherwise report
        // an older figure).
        let exported = self.export_model()?;
        if let Some(val) = self.validate(&exported)? {
            last_val = Some(val);
        }
        let elapsed = self.elapsed_before + started.elapsed().as_secs_f64();
        self.checkpoint(elapsed)?;
        let trained = (self.step - first_step) as f64 * self.opts.batch as f64;
        let summary = TrainingSummary {
            data: self.data_name.clone(),
            validation_fraction: self.val_fraction,
            train_images: self.train.len(),
            validation_images: self.val.len(),
            steps: self.step,
            batch: self.opts.batch,
            train_seconds: elapsed,
            images_per_second: trained / started.elapsed().as_secs_f64().max(1e-9),
            final_train_bits_per_dim: last_train.or(self.history.last().map(|h| h.1)),
            final_validation_bits_per_dim: last_val,
            ema: self.opts.ema,
            command: std::env::args().collect::<Vec<_>>().join(" "),
            device: crate::model::device::device_name(self.glow.device()),
            glowd_version: env!("CARGO_PKG_VERSION").into(),
            options: self.opts.clone(),
        };
        let model_dir = self.out.join("model");
        exported.save(&model_dir)?;
        std::fs::write(model_dir.join("training.json"), serde_json::to_string_pretty(&summary).expect("serialises"))
            .map_err(|e| file_err(&model_dir, e))?;
        let curve_path = self.out.join("curve.png");
        curve::draw(&self.history, &curve_path).map_err(|e| file_err(&curve_path, e))?;
        Ok(summary)
    }
}

/// The checkpoint folder under `out`: `checkpoint/`, or `checkpoint.new/` when a crash hit between writing it and
/// swapping it in.
pub fn checkpoint_dir(out: &Path) -> Option<PathBuf> {
    ["checkpoint", "checkpoint.new"]
        .iter()
        .map(|d| out.join(d))
        .find(|d| d.join("state.json").exists() && d.join(CONFIG_FILE).exists())
}

/// Detached copies of every variable (parameters and buffers).
fn snapshot(glow: &Glow) -> BTreeMap<String, Tensor> {
    glow.vs.variables().into_iter().map(|(k, v)| (k, v.detach().copy())).collect()
}

fn epoch_order(seed: u64, epoch: u64, n: usize) -> Vec<usize> {
    use rand::seq::SliceRandom;
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ epoch.wrapping_mul(0x2545_f491_4f6c_dd1d));
    order.shuffle(&mut rng);
    order
}

fn uniform(rng: &mut ChaCha8Rng, shape: &[i64]) -> Tensor {
    let n: i64 = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| rng.gen::<f32>()).collect();
    Tensor::from_slice(&data).view(shape)
}

/// Loads a model config for training: from an existing model folder or a preset with overrides.
pub fn config_for(model: Option<&Path>, preset: &str, set: &[String]) -> Result<GlowConfig, ModelError> {
    let mut config = match model {
        Some(dir) => Glow::read_config(dir)?,
        None => GlowConfig::preset(preset)?,
    };
    for s in set {
        config.set(s)?;
    }
    Ok(config)
}
