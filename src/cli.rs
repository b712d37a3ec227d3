//! The `glowd` command line. Each subcommand is a thin shell over the library; errors that concern one input
//! file are reported on one line and the other files still run (exit status 1 at the end).
use crate::imageio::{self, Fit, Pixels};
use crate::model::batch::{pixels_to_tensor, tensor_to_pixels};
use crate::model::device::{device_name, parse_device};
use crate::model::latents_file::{read_latents, write_latents};
use crate::model::{Glow, GlowConfig};
use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tch::{Device, Tensor};

#[derive(Parser)]
#[command(name = "glowd", version, about = "Glow flow model: encode, decode, sample and evaluate images exactly")]
struct Cli {
    /// Log lines as text or as JSON objects, one per line, with the job's id, topic, partition and offset as
    /// fields (what log collectors on Kubernetes parse). Levels come from GLOWD_LOG (e.g. `info,glowd=debug`).
    #[arg(long, global = true, env = "GLOWD_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Clone)]
pub struct Runtime {
    /// cpu, cuda, cuda:N or auto (cuda when available)
    #[arg(long, default_value = "cpu", global = true)]
    device: String,
    /// CPU threads for torch (0: torch's default)
    #[arg(long, default_value_t = 0, global = true)]
    threads: i32,
}

#[derive(Args, Clone)]
pub struct FitArgs {
    /// Centre-crop to a square and resize images to the model size (otherwise a wrong size is an error)
    #[arg(long)]
    resize: bool,
    /// Crop box left,top,right,bottom applied before resizing (CelebA faces: 10,25,80,95)
    #[arg(long, value_parser = parse_crop)]
    crop: Option<(u32, u32, u32, u32)>,
}

impl FitArgs {
    pub fn fit(&self) -> Fit {
        Fit { crop: self.crop, resize: self.resize || self.crop.is_some() }
    }
}

fn parse_crop(s: &str) -> Result<(u32, u32, u32, u32), String> {
    let v: Vec<u32> = s
        .split(',')
        .map(|x| x.trim().parse::<u32>().map_err(|e| format!("`{x}`: {e}")))
        .collect::<Result<_, _>>()?;
    match v.as_slice() {
        [l, t, r, b] => Ok((*l, *t, *r, *b)),
        _ => Err("expected four numbers: left,top,right,bottom".into()),
    }
}

#[derive(Subcommand)]
enum Command {
    /// Create and inspect model folders
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// Encode images to latents (`<stem>.safetensors` in --out) and print a JSON line per image with bits/dim
    Encode {
        #[arg(long)]
        model: PathBuf,
        #[arg(required = true)]
        images: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        /// Images per forward pass
        #[arg(long, default_value_t = 16)]
        batch: usize,
        #[command(flatten)]
        fit: FitArgs,
        #[command(flatten)]
        runtime: Runtime,
    },
    /// Decode latent files to images (`<stem>.png` in --out)
    Decode {
        #[arg(long)]
        model: PathBuf,
        #[arg(required = true)]
        latents: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        runtime: Runtime,
    },
    /// Draw samples from the model into one grid image
    Sample {
        #[arg(long)]
        model: PathBuf,
        #[arg(short = 'n', long, default_value_t = 16)]
        n: i64,
        /// Temperature: one value for every level, or one per level (finest first), comma-separated
        #[arg(long, default_value = "0.7", value_delimiter = ',')]
        temperature: Vec<f64>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Grid columns (default: square-ish)
        #[arg(long)]
        cols: Option<usize>,
        /// Enlarge the written picture N times (nearest neighbour)
        #[arg(long, default_value_t = 1)]
        scale: u32,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        runtime: Runtime,
    },
    /// Bits per dimension of every image (one JSON line each) and their mean (the last line); `--split validation`
    /// scores exactly the images `glowd train` held out from the same data
    Eval {
        #[arg(long)]
        model: PathBuf,
        /// An image, a folder of images, a CelebA folder, an IDX file or a .npy array (as `glowd train --data`;
        /// arrays are named `<path as given>#<index>`, so give the path as training did for the same split)
        data: PathBuf,
        #[arg(long, value_enum, default_value = "auto")]
        format: crate::data::Format,
        /// Which images: the held-out validation set, the training set, or all (the fixed rule of `glowd train`)
        #[arg(long, value_enum, default_value = "all")]
        split: crate::data::Split,
        /// The --val-fraction the model was trained with (glowd train's default is 0.05)
        #[arg(long, default_value_t = 0.05)]
        val_fraction: f64,
        /// Read at most this many images before splitting (as `glowd train --max-images`)
        #[arg(long)]
        max_images: Option<usize>,
        /// Print only the summary line
        #[arg(long)]
        summary: bool,
        #[arg(long, default_value_t = 16)]
        batch: usize,
        #[command(flatten)]
        fit: FitArgs,
        #[command(flatten)]
        runtime: Runtime,
    },
    /// Learn attribute directions from labelled images into the model folder
    Directions(crate::cli_edit::DirectionsArgs),
    /// Edit images along attribute directions (each output keeps its input's name)
    Edit(crate::cli_edit::EditArgs),
    /// Blend two images in latent space: a strip of frames (and optionally a GIF)
    Interpolate(crate::cli_edit::InterpolateArgs),
    /// Keep an image's coarse levels and redraw the fine ones: variations of one image
    Resample(crate::cli_edit::ResampleArgs),
    /// Contact sheet: one row per image, one column per strength of one attribute
    Sheet(crate::cli_edit::SheetArgs),
    /// Train a model by maximum likelihood (see the README's Training section); a flag given twice takes its
    /// last value (so scripts can pass "$@" after their defaults), except repeatable ones like --set
    #[command(args_override_self = true)]
    Train(TrainArgs),
    /// Tile images into one picture (rows of --cols), e.g. originals above their reconstructions
    Grid {
        #[arg(required = true)]
        images: Vec<PathBuf>,
        #[arg(long, default_value_t = 8)]
        cols: usize,
        #[arg(long)]
        out: PathBuf,
    },
    /// Import another implementation's checkpoint as a glowd model folder (rosinality/glow-pytorch state_dicts)
    Import {
        /// Checkpoint format: `rosinality` (the state_dict of rosinality/glow-pytorch's `Glow`)
        #[arg(long, value_parser = ["rosinality"])]
        format: String,
        /// `torch.save`d state_dict (.pt/.pth; a `module.` prefix is removed) or a .safetensors state_dict
        checkpoint: PathBuf,
        /// Flow steps per block (the port's --n_flow)
        #[arg(long)]
        n_flow: i64,
        /// Blocks (the port's --n_block)
        #[arg(long)]
        n_block: i64,
        /// Affine coupling (the port's --affine); without --affine or --additive, read from the checkpoint
        #[arg(long, conflicts_with = "additive")]
        affine: bool,
        /// Additive coupling (the port's default)
        #[arg(long)]
        additive: bool,
        /// Plain 1x1 convs (the port's --no_lu; its last block stays LU)
        #[arg(long)]
        no_lu: bool,
        #[arg(long)]
        image_size: i64,
        #[arg(long)]
        n_bits: u32,
        #[arg(long, default_value_t = 3)]
        channels: i64,
        /// Model folder to write
        #[arg(long)]
        out: PathBuf,
    },
    /// Run job lines through the pipeline locally (embedded mode: no Kafka or S3), writing outputs, manifests,
    /// results.jsonl and dead-letters.jsonl
    Run(crate::cli_pipeline::RunArgs),
    /// The daemon: Kafka jobs topic -> batched device workers -> S3, results and DLQ topics, /metrics /healthz
    /// /readyz; SIGTERM drains and commits
    Serve(crate::cli_pipeline::ServeArgs),
    /// Check a pipeline file (keys, models, the [submit] job's model and attributes) before anything runs; exit 1
    /// naming each problem by key
    Validate(crate::cli_submit::ValidateArgs),
    /// Enqueue one job per image under an S3 prefix (the pipeline file's [submit] template); prints the run id
    Submit(crate::cli_submit::SubmitArgs),
    /// Done / failed / pending of a submitted run, from the results topic and the run record
    Status(crate::cli_submit::StatusArgs),
    /// A run's latents as Parquet shards plus dataset.json, under <output prefix>/datasets/<run>/
    Dataset(crate::cli_submit::DatasetArgs),
    /// Compare the pixels of image pairs (a1 b1 a2 b2 ...): prints the differences, exit 1 if any pair differs
    Compare {
        #[arg(required = true, num_args = 2..)]
        pairs: Vec<PathBuf>,
    },
    /// Encode/decode throughput on a preset with random weights, and this machine's convolution throughput
    Bench {
        #[arg(long, default_value = "glow-64")]
        preset: String,
        #[arg(long = "set")]
        set: Vec<String>,
        #[arg(long, default_value_t = 8)]
        batch: i64,
        /// Timed iterations of each direction (after one warm-up)
        #[arg(long, default_value_t = 3)]
        iters: usize,
        #[command(flatten)]
        runtime: Runtime,
    },
}

#[derive(Args)]
struct TrainArgs {
    /// Training data: an image folder, a CelebA folder, an IDX file or a .npy array
    #[arg(long)]
    data: PathBuf,
    #[arg(long, value_enum, default_value = "auto")]
    format: crate::data::Format,
    /// Start from this model folder (e.g. from `glowd model init`) instead of a preset
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, default_value = "tiny")]
    preset: String,
    #[arg(long = "set")]
    set: Vec<String>,
    /// Output folder: model/ (exported), checkpoint/, metrics.jsonl, samples/, curve.png
    #[arg(long)]
    out: PathBuf,
    /// Continue from out/checkpoint exactly (optimizer state, step, EMA; batches and noise are step-seeded)
    #[arg(long)]
    resume: bool,
    #[arg(long, default_value_t = 2000)]
    steps: i64,
    #[arg(long, default_value_t = 32)]
    batch: usize,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Linear learning-rate warm-up steps
    #[arg(long, default_value_t = 200)]
    warmup: i64,
    /// Maximum global gradient norm (0 disables clipping)
    #[arg(long, default_value_t = 50.0)]
    clip: f64,
    #[arg(long, value_enum, default_value = "adam")]
    optimizer: crate::train::adam::Algorithm,
    /// EMA decay of the exported weights (0 disables the EMA)
    #[arg(long, default_value_t = 0.999)]
    ema: f64,
    #[arg(long, default_value_t = 256)]
    init_batch: usize,
    #[arg(long, default_value_t = 250)]
    eval_every: i64,
    #[arg(long, default_value_t = 500)]
    sample_every: i64,
    #[arg(long, default_value_t = 500)]
    checkpoint_every: i64,
    #[arg(long, default_value_t = 50)]
    log_every: i64,
    /// Fraction of the data held out for validation (chosen by a hash of each name, so it is stable)
    #[arg(long, default_value_t = 0.05)]
    val_fraction: f64,
    /// Validation images scored at each evaluation
    #[arg(long, default_value_t = 1000)]
    val_limit: usize,
    /// Use at most this many images
    #[arg(long)]
    max_images: Option<usize>,
    /// Random horizontal flips
    #[arg(long)]
    hflip: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Recompute each flow step's activations during backprop instead of keeping them (less memory, ~1.3x time)
    #[arg(long)]
    checkpoint_grads: bool,
    /// No progress bar: log lines only
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    fit: FitArgs,
    #[command(flatten)]
    runtime: Runtime,
}

fn train(args: TrainArgs) -> Result<usize> {
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

#[derive(Subcommand)]
enum ModelCommand {
    /// A new model from a preset, with random weights and ActNorm initialised on a batch of images
    Init {
        #[arg(long, default_value = "tiny")]
        preset: String,
        /// Override a config field, e.g. --set steps=2 --set hidden=64 --set coupling=additive
        #[arg(long = "set")]
        set: Vec<String>,
        /// Folder of images for the data-dependent ActNorm initialisation
        #[arg(long)]
        data: PathBuf,
        /// Images used for that initialisation
        #[arg(long, default_value_t = 64)]
        init_batch: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        fit: FitArgs,
        #[command(flatten)]
        runtime: Runtime,
    },
    /// Print a model folder's config and size
    Info { dir: PathBuf },
}

pub(crate) fn setup(runtime: &Runtime) -> Result<Device> {
    if runtime.threads > 0 {
        tch::set_num_threads(runtime.threads);
    }
    Ok(parse_device(&runtime.device)?)
}

/// Flush denormal floats to zero (FTZ and DAZ bits of MXCSR) before libtorch starts its worker threads, which
/// inherit the setting. Training drifts many values (Adam's second moments, small gradients) into the denormal
/// range, where every x86 float operation takes ~100x longer: a 32x32 face model slowed from 200 to 20 images/s
/// after a thousand steps without this. PyTorch offers the same as `torch.set_flush_denormal(True)`.
pub fn flush_denormals() {
    #[cfg(target_arch = "x86_64")]
    #[allow(deprecated)]
    // SAFETY: only sets two rounding-mode bits of this thread's MXCSR register.
    unsafe {
        use std::arch::x86_64::{_mm_getcsr, _mm_setcsr};
        _mm_setcsr(_mm_getcsr() | 0x8040);
    }
}

pub fn main() -> ExitCode {
    flush_denormals();
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("GLOWD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        // Span fields (job id, topic, partition, offset) flattened into each line's object.
        LogFormat::Json => logs.json().flatten_event(true).with_current_span(true).with_span_list(false).init(),
        LogFormat::Text => logs.init(),
    }
    match run(cli) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(failed) => {
            eprintln!("glowd: {failed} input(s) failed");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("glowd: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs a command; returns how many inputs failed.
fn run(cli: Cli) -> Result<usize> {
    match cli.command {
        Command::Model { command: ModelCommand::Init { preset, set, data, init_batch, seed, out, fit, runtime } } => {
            let device = setup(&runtime)?;
            let mut config = GlowConfig::preset(&preset)?;
            for s in &set {
                config.set(s)?;
            }
            let files = imageio::list_images(&data);
            if files.is_empty() {
                bail!("{}: no images (png, jpg, jpeg, webp) found", data.display());
            }
            let (images, failed) = load_images(&files, &config, fit.fit(), init_batch);
            if images.is_empty() {
                bail!("{}: none of the images could be used", data.display());
            }
            let mut glow = Glow::new(config, device, seed)?;
            glow.initialize_actnorm(&pixels_to_tensor(&images.iter().map(|(_, p)| p.clone()).collect::<Vec<_>>()))?;
            glow.save(&out)?;
            eprintln!(
                "wrote {} ({} parameters, ActNorm initialised on {} images)",
                out.display(),
                glow.parameter_count(),
                images.len()
            );
            Ok(failed)
        }
        Command::Model { command: ModelCommand::Info { dir } } => {
            let config = Glow::read_config(&dir)?;
            let glow = Glow::load(&dir, Device::Cpu)?;
            println!("{}", serde_json::to_string_pretty(&config)?);
            println!("parameters: {}", glow.parameter_count());
            println!("actnorm initialised: {}", glow.actnorm_initialized());
            for (i, (c, h, w)) in config.latent_shapes().iter().enumerate() {
                println!("latent level {i}: {c}x{h}x{w}");
            }
            match crate::model::directions::Directions::load(&dir, &config)? {
                None => println!("directions: none (learn some with `glowd directions`)"),
                Some(d) => {
                    println!("directions: {}", d.summary.attributes.len());
                    for (name, p) in &d.summary.attributes {
                        println!(
                            "  {name}: {} positive, {} negative, norm {:.2}, from {} ({})",
                            p.positives, p.negatives, p.norm, p.source, p.created
                        );
                    }
                }
            }
            Ok(0)
        }
        Command::Encode { model, images, out, batch, fit, runtime } => {
            let device = setup(&runtime)?;
            let glow = Glow::load(&model, device)?;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let (loaded, mut failed) = load_images(&images, &glow.config, fit.fit(), usize::MAX);
            for chunk in loaded.chunks(batch.max(1)) {
                let pixels: Vec<Pixels> = chunk.iter().map(|(_, p)| p.clone()).collect();
                let latents = glow.encode(&pixels_to_tensor(&pixels))?;
                let bpd = latents.bits_per_dim(&glow.config);
                for (i, (path, _)) in chunk.iter().enumerate() {
                    let target = out.join(format!("{}.safetensors", stem(path)));
                    let one = latents.select(i as i64);
                    match write_latents(&target, &one.z, bpd[i]) {
                        Ok(()) => println!(
                            "{}",
                            serde_json::json!({
                                "file": path.display().to_string(),
                                "latents": target.display().to_string(),
                                "bits_per_dim": bpd[i],
                            })
                        ),
                        Err(e) => {
                            eprintln!("{e}");
                            failed += 1;
                        }
                    }
                }
            }
            Ok(failed)
        }
        Command::Decode { model, latents, out, runtime } => {
            let device = setup(&runtime)?;
            let glow = Glow::load(&model, device)?;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let mut failed = 0;
            for path in &latents {
                let result = read_latents(path, &glow.config).and_then(|z| glow.decode(&z));
                match result {
                    Ok(pixels) => {
                        let target = out.join(format!("{}.png", stem(path)));
                        let img = imageio::pixels_to_image(&tensor_to_pixels(&pixels)[0]);
                        if let Err(e) = imageio::save_png(&img, &target) {
                            eprintln!("{e}");
                            failed += 1;
                        }
                    }
                    Err(e) => {
                        eprintln!("{e}");
                        failed += 1;
                    }
                }
            }
            Ok(failed)
        }
        Command::Sample { model, n, temperature, seed, cols, scale, out, runtime } => {
            let device = setup(&runtime)?;
            let glow = Glow::load(&model, device)?;
            let temps = per_level(&temperature, glow.config.levels as usize)?;
            let pixels = glow.sample(n, &temps, seed)?;
            let cols = cols.unwrap_or_else(|| (n as f64).sqrt().ceil() as usize);
            imageio::save_png_scaled(&imageio::grid(&tensor_to_pixels(&pixels), cols), &out, scale)?;
            eprintln!("wrote {} ({n} samples, temperatures {temps:?}, seed {seed})", out.display());
            Ok(0)
        }
        Command::Eval { model, data, format, split, val_fraction, max_images, summary, batch, fit, runtime } => {
            let device = setup(&runtime)?;
            let glow = Glow::load(&model, device)?;
            let (channels, size) = (glow.config.channels as u8, glow.config.image_size as u32);
            let target = crate::data::Target { channels, size, fit: fit.fit() };
            let dataset = crate::data::load(&data, format, target, max_images.unwrap_or(usize::MAX))?;
            let failed = dataset.skipped.len();
            for reason in &dataset.skipped {
                eprintln!("{reason}");
            }
            let dataset = dataset.select(split, val_fraction);
            // Files by their path (names are relative to a folder); array entries by `<file>#<index>`.
            let file = |name: &str| match name {
                "" => data.display().to_string(),
                n if data.is_dir() => data.join(n).display().to_string(),
                n => n.to_string(),
            };
            let mut all = Vec::new();
            for (names, images) in dataset.names.chunks(batch.max(1)).zip(dataset.images.chunks(batch.max(1))) {
                let bpd = glow.encode(&pixels_to_tensor(images))?.bits_per_dim(&glow.config);
                for (name, b) in names.iter().zip(bpd) {
                    if !summary {
                        println!("{}", serde_json::json!({"file": file(name), "bits_per_dim": b}));
                    }
                    all.push(b);
                }
            }
            let split_name = format!("{split:?}").to_lowercase();
            if all.is_empty() {
                bail!("{}: no images in the {split_name} split (--val-fraction {val_fraction})", data.display());
            }
            let mean = all.iter().sum::<f64>() / all.len() as f64;
            println!(
                "{}",
                serde_json::json!({"images": all.len(), "mean_bits_per_dim": mean, "split": split_name,
                    "val_fraction": val_fraction, "skipped": failed})
            );
            Ok(failed)
        }
        Command::Train(args) => train(args),
        Command::Directions(args) => crate::cli_edit::directions(args),
        Command::Edit(args) => crate::cli_edit::edit(args),
        Command::Interpolate(args) => crate::cli_edit::interpolate(args),
        Command::Resample(args) => crate::cli_edit::resample(args),
        Command::Sheet(args) => crate::cli_edit::sheet(args),
        Command::Grid { images, cols, out } => {
            let mut tiles = Vec::new();
            let mut failed = 0;
            for path in &images {
                let loaded = image::open(path)
                    .map_err(|e| imageio::ImageError::Unreadable { path: path.clone(), message: e.to_string() })
                    .and_then(|img| {
                        let side = img.width().min(img.height());
                        imageio::image_to_pixels(img, path, 3, side, Fit { crop: None, resize: true })
                    });
                match loaded {
                    Ok(p) if tiles.first().is_none_or(|f: &Pixels| f.size == p.size) => tiles.push(p),
                    Ok(_) => {
                        eprintln!("{}: not the size of the first image, skipped", path.display());
                        failed += 1;
                    }
                    Err(e) => {
                        eprintln!("{e}");
                        failed += 1;
                    }
                }
            }
            if tiles.is_empty() {
                bail!("no image could be read");
            }
            imageio::save_png(&imageio::grid(&tiles, cols), &out)?;
            Ok(failed)
        }
        Command::Import {
            format: _,
            checkpoint,
            n_flow,
            n_block,
            affine,
            additive,
            no_lu,
            image_size,
            n_bits,
            channels,
            out,
        } => {
            use crate::model::import::{guess_affine, import_rosinality, read_state_dict, RosinalityOptions};
            let state = read_state_dict(&checkpoint)?;
            let affine = match (affine, additive) {
                (true, _) => true,
                (_, true) => false,
                _ => guess_affine(&state, channels).with_context(|| {
                    format!("{}: cannot tell affine from additive: give --affine or --additive", checkpoint.display())
                })?,
            };
            let options = RosinalityOptions { n_flow, n_block, affine, lu: !no_lu, image_size, n_bits, channels };
            let glow = import_rosinality(&state, &options).with_context(|| checkpoint.display().to_string())?;
            glow.save(&out)?;
            eprintln!(
                "wrote {} from {} ({} tensors, {} parameters, hidden {})",
                out.display(),
                checkpoint.display(),
                glow.named_tensors().len(),
                glow.parameter_count(),
                glow.config.hidden
            );
            Ok(0)
        }
        Command::Run(args) => crate::cli_pipeline::run(args),
        Command::Serve(args) => crate::cli_pipeline::serve(args),
        Command::Validate(args) => crate::cli_submit::validate(args),
        Command::Submit(args) => crate::cli_submit::submit(args),
        Command::Status(args) => crate::cli_submit::status(args),
        Command::Dataset(args) => crate::cli_submit::dataset(args),
        Command::Compare { pairs } => {
            if pairs.len() % 2 != 0 {
                bail!("give images in pairs (a1 b1 a2 b2 ...), got {}", pairs.len());
            }
            let mut differing = 0;
            for pair in pairs.chunks(2) {
                let read = |p: &PathBuf| image::open(p).with_context(|| format!("{}", p.display()));
                let (a, b) = (read(&pair[0])?.to_rgba8(), read(&pair[1])?.to_rgba8());
                let same_size = a.dimensions() == b.dimensions();
                let diffs = if same_size {
                    a.as_raw().iter().zip(b.as_raw()).filter(|(x, y)| x != y).count()
                } else {
                    usize::MAX
                };
                if diffs != 0 {
                    differing += 1;
                    let what = if same_size { format!("{diffs} values differ") } else { "sizes differ".into() };
                    println!("{} vs {}: {what}", pair[0].display(), pair[1].display());
                }
            }
            println!("{} of {} pairs identical", pairs.len() / 2 - differing, pairs.len() / 2);
            Ok(differing)
        }
        Command::Bench { preset, set, batch, iters, runtime } => {
            let device = setup(&runtime)?;
            let mut config = GlowConfig::preset(&preset)?;
            for s in &set {
                config.set(s)?;
            }
            println!("device {} threads {}", device_name(device), tch::get_num_threads());
            crate::bench::run(&config, device, batch, iters)?;
            Ok(0)
        }
    }
}

pub(crate) fn per_level(values: &[f64], levels: usize) -> Result<Vec<f64>> {
    match values.len() {
        1 => Ok(vec![values[0]; levels]),
        n if n == levels => Ok(values.to_vec()),
        n => bail!("{n} temperatures given: give one, or one per level ({levels})"),
    }
}

fn stem(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into())
}

/// Loads up to `limit` usable images, reporting each unusable one on its own line; returns them and the count of
/// failures.
pub(crate) fn load_images(files: &[PathBuf], config: &GlowConfig, fit: Fit, limit: usize) -> (Vec<(PathBuf, Pixels)>, usize) {
    let mut ok = Vec::new();
    let mut failed = 0;
    for path in files {
        if ok.len() >= limit {
            break;
        }
        match imageio::load_image(path, config.channels as u8, config.image_size as u32, fit) {
            Ok(p) => ok.push((path.clone(), p)),
            Err(e) => {
                eprintln!("{e}");
                failed += 1;
            }
        }
    }
    (ok, failed)
}

/// Used by tests: a batch tensor from files.
pub fn load_batch(files: &[PathBuf], config: &GlowConfig, fit: Fit) -> Result<Tensor> {
    let (images, failed) = load_images(files, config, fit, usize::MAX);
    if failed > 0 || images.is_empty() {
        bail!("{failed} of {} images failed to load", files.len());
    }
    Ok(pixels_to_tensor(&images.into_iter().map(|(_, p)| p).collect::<Vec<_>>()))
}
