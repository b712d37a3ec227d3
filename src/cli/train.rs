//! `train`: maximum-likelihood training of a model folder.
use crate::model::Glow;
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;
use super::common::*;

#[derive(Args)]
pub struct TrainArgs {
    /// Training data: an image folder, a CelebA folder, an IDX file or a .npy array
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, value_enum, default_value = "auto")]
    pub format: crate::data::Format,
    /// Start from this model folder (e.g. from `glowd model init`) instead of a preset
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    #[arg(long = "set")]
    pub set: Vec<String>,
    /// Output folder: model/ (exported), checkpoint/, metrics.jsonl, samples/, curve.png
    #[arg(long)]
    pub out: PathBuf,
    /// Continue from out/checkpoint exactly (optimizer state, step, EMA; batches and noise are step-seeded)
    #[arg(long)]
    pub resume: bool,
    #[arg(long, default_value_t = 2000)]
    pub steps: i64,
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Linear learning-rate warm-up steps
    #[arg(long, default_value_t = 200)]
    pub warmup: i64,
    /// Maximum global gradient norm (0 disables clipping)
    #[arg(long, default_value_t = 50.0)]
    pub clip: f64,
    #[arg(long, value_enum, default_value = "adam")]
    pub optimizer: crate::train::adam::Algorithm,
    /// EMA decay of the exported weights (0 disables the EMA)
    #[arg(long, default_value_t = 0.999)]
    pub ema: f64,
    #[arg(long, default_value_t = 256)]
    pub init_batch: usize,
    #[arg(long, default_value_t = 250)]
    pub eval_every: i64,
    #[arg(long, default_value_t = 500)]
    pub sample_every: i64,
    #[arg(long, default_value_t = 500)]
    pub checkpoint_every: i64,
    #[arg(long, default_value_t = 50)]
    pub log_every: i64,
    /// Fraction of the data held out for validation (chosen by a hash of each name, so it is stable)
    #[arg(long, default_value_t = crate::data::DEFAULT_VAL_FRACTION)]
    pub val_fraction: f64,
    /// Validation images scored at each evaluation
    #[arg(long, default_value_t = 1000)]
    pub val_limit: usize,
    /// Use at most this many images
    #[arg(long)]
    pub max_images: Option<usize>,
    /// Random horizontal flips
    #[arg(long)]
    pub hflip: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Recompute each flow step's activations during backprop instead of keeping them (less memory, ~1.3x time)
    #[arg(long)]
    pub checkpoint_grads: bool,
    /// No progress bar: log lines only
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub fit: FitArgs,
    #[command(flatten)]
    pub runtime: Runtime,
}

pub fn train(args: TrainArgs) -> Result<usize> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let device = setup(&args.runtime)?;
    let config = crate::train::config_for(args.model.as_deref(), &args.preset, &args.set)?;
    // Without --resize (or a --crop box, which implies it) images of another size are reported and skipped.
    let target =
        crate::data::Target { channels: config.channels as u8, size: config.image_size as u32, fit: args.fit.fit() };
    let dataset = crate::data::load(&args.data, args.format, target, args.max_images.unwrap_or(usize::MAX))?;
    if let Some(report) = dataset.skipped_report() {
        tracing::warn!("{report}");
    }
    let (train_set, val_set) = dataset.split(args.val_fraction);
    if train_set.is_empty() {
        bail!("{}: no training images left after the validation split", args.data.display());
    }
    tracing::info!("{} training and {} validation images from {}", train_set.len(), val_set.len(), args.data.display());
    let glow = match &args.model {
        Some(dir) if !args.resume => {
            let mut g = Glow::load(dir, device)?;
            for s in &args.set {
                g.config.set(s)?;
            }
            g
        }
        _ => Glow::new(config, device, args.seed)?,
    };
    let opts = crate::train::TrainOptions {
        steps: args.steps,
        batch: args.batch,
        lr: args.lr,
        warmup: args.warmup,
        clip: args.clip,
        algorithm: args.optimizer,
        ema: (args.ema > 0.0).then_some(args.ema),
        init_batch: args.init_batch,
        eval_every: args.eval_every.max(1),
        sample_every: args.sample_every.max(1),
        checkpoint_every: args.checkpoint_every.max(1),
        log_every: args.log_every.max(1),
        hflip: args.hflip,
        seed: args.seed,
        checkpoint_grads: args.checkpoint_grads,
        val_limit: args.val_limit,
        precision: args.runtime.precision,
    };
    let mut trainer = crate::train::Trainer::new(glow, &train_set, &val_set, opts, &args.out, args.resume)?;
    trainer.data_name = args.data.display().to_string();
    trainer.val_fraction = Some(args.val_fraction);
    trainer.quiet = args.quiet;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // First Ctrl-C: finish the step, checkpoint, export. A second one exits at once.
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("stopping after this step (checkpoint and export follow; Ctrl-C again to abort)");
    })?;
    if args.resume {
        tracing::info!("resuming at step {}", trainer.step());
    }
    let summary = trainer.run(&stop)?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    eprintln!("model: {}", args.out.join("model").display());
    Ok(0)
}
