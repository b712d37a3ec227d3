//! `model init|info`, `import` and `bench`: model folders and their throughput.
use crate::codec::image::{self as imageio};
use crate::model::batch::pixels_to_tensor;
use crate::model::device::device_name;
use crate::model::{Glow, GlowConfig};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use tch::Device;
use super::common::*;

#[derive(Subcommand)]
pub enum ModelCommand {
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

pub fn model(command: ModelCommand) -> Result<usize> {
    match command {
        c @ ModelCommand::Init { .. } => init(c),
        c @ ModelCommand::Info { .. } => info(c),
    }
}

fn init(command: ModelCommand) -> Result<usize> {
    let ModelCommand::Init { preset, set, data, init_batch, seed, out, fit, runtime } = command else { unreachable!() };
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

fn info(command: ModelCommand) -> Result<usize> {
    let ModelCommand::Info { dir } = command else { unreachable!() };
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

#[derive(Args)]
pub struct ImportArgs {
    /// Checkpoint format: `rosinality` (the state_dict of rosinality/glow-pytorch's `Glow`)
    #[arg(long, value_parser = ["rosinality"])]
    pub format: String,
    /// `torch.save`d state_dict (.pt/.pth; a `module.` prefix is removed) or a .safetensors state_dict
    pub checkpoint: PathBuf,
    /// Flow steps per block (the port's --n_flow)
    #[arg(long)]
    pub n_flow: i64,
    /// Blocks (the port's --n_block)
    #[arg(long)]
    pub n_block: i64,
    /// Affine coupling (the port's --affine); without --affine or --additive, read from the checkpoint
    #[arg(long, conflicts_with = "additive")]
    pub affine: bool,
    /// Additive coupling (the port's default)
    #[arg(long)]
    pub additive: bool,
    /// Plain 1x1 convs (the port's --no_lu; its last block stays LU)
    #[arg(long)]
    pub no_lu: bool,
    #[arg(long)]
    pub image_size: i64,
    #[arg(long)]
    pub n_bits: u32,
    #[arg(long, default_value_t = 3)]
    pub channels: i64,
    /// Model folder to write
    #[arg(long)]
    pub out: PathBuf,
    
}

pub fn import(args: ImportArgs) -> Result<usize> {
    let ImportArgs {
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
        } = args;
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

#[derive(Args)]
pub struct BenchArgs {
    #[arg(long, default_value = "glow-64")]
    pub preset: String,
    #[arg(long = "set")]
    pub set: Vec<String>,
    #[arg(long, default_value_t = 8)]
    pub batch: i64,
    /// Timed iterations of each direction (after one warm-up)
    #[arg(long, default_value_t = 3)]
    pub iters: usize,
    #[command(flatten)]
    pub runtime: Runtime,
    
}

pub fn bench(args: BenchArgs) -> Result<usize> {
    let BenchArgs { preset, set, batch, iters, runtime } = args;
    let device = setup(&runtime)?;
    let mut config = GlowConfig::preset(&preset)?;
    for s in &set {
        config.set(s)?;
    }
    println!("device {} threads {}", device_name(device), tch::get_num_threads());
    crate::bench::run(&config, device, batch, iters, runtime.precision)?;
    Ok(0)

}

