//! `encode`, `decode`, `sample` and `eval`: the model applied to files.
use crate::codec::image::{self as imageio, Pixels};
use crate::model::batch::{pixels_to_tensor, tensor_to_pixels};
use crate::model::latents_file::{read_latents, write_latents};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;
use super::common::*;

#[derive(Args)]
pub struct EncodeArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    #[arg(long)]
    pub out: PathBuf,
    /// Images per forward pass
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    #[command(flatten)]
    pub fit: FitArgs,
    #[command(flatten)]
    pub runtime: Runtime,
    
}

pub fn encode(args: EncodeArgs) -> Result<usize> {
    let EncodeArgs { model, images, out, batch, fit, runtime } = args;
    let device = setup(&runtime)?;
    let glow = load_model(&model, device, &runtime)?;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let (loaded, mut failed) = load_images(&images, &glow.config, fit.fit(), usize::MAX);
    for chunk in loaded.chunks(batch.max(1)) {
        let pixels: Vec<Pixels> = chunk.iter().map(|(_, p)| p.clone()).collect();
        let latents = glow.encode(&pixels_to_tensor(&pixels))?;
        let bpd = latents.bits_per_dim(&glow.config);
        for (i, (path, _)) in chunk.iter().enumerate() {
            let target = out.join(format!("{}.safetensors", stem(path)));
            let one = latents.select(i as i64);
            match write_latents(&target, &one.z, bpd[i], glow.precision()) {
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

#[derive(Args)]
pub struct DecodeArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[arg(required = true)]
    pub latents: Vec<PathBuf>,
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub runtime: Runtime,
    
}

pub fn decode(args: DecodeArgs) -> Result<usize> {
    let DecodeArgs { model, latents, out, runtime } = args;
    let device = setup(&runtime)?;
    let glow = load_model(&model, device, &runtime)?;
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

#[derive(Args)]
pub struct SampleArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[arg(short = 'n', long, default_value_t = 16)]
    pub n: i64,
    /// Temperature: one value for every level, or one per level (finest first), comma-separated
    #[arg(long, default_values_t = [crate::job::DEFAULT_TEMPERATURE], value_delimiter = ',')]
    pub temperature: Vec<f64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Grid columns (default: square-ish)
    #[arg(long)]
    pub cols: Option<usize>,
    /// Enlarge the written picture N times (nearest neighbour)
    #[arg(long, default_value_t = 1)]
    pub scale: u32,
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub runtime: Runtime,
    
}

pub fn sample(args: SampleArgs) -> Result<usize> {
    let SampleArgs { model, n, temperature, seed, cols, scale, out, runtime } = args;
    let device = setup(&runtime)?;
    let glow = load_model(&model, device, &runtime)?;
    let temps = per_level(&temperature, glow.config.levels as usize)?;
    let pixels = glow.sample(n, &temps, seed)?;
    let cols = cols.unwrap_or_else(|| (n as f64).sqrt().ceil() as usize);
    imageio::save_png_scaled(&imageio::grid(&tensor_to_pixels(&pixels), cols), &out, scale)?;
    eprintln!("wrote {} ({n} samples, temperatures {temps:?}, seed {seed})", out.display());
    Ok(0)

}

#[derive(Args)]
pub struct EvalArgs {
    #[arg(long)]
    pub model: PathBuf,
    /// An image, a folder of images, a CelebA folder, an IDX file or a .npy array (as `glowd train --data`;
    /// arrays are named `<path as given>#<index>`, so give the path as training did for the same split)
    pub data: PathBuf,
    #[arg(long, value_enum, default_value = "auto")]
    pub format: crate::data::Format,
    /// Which images: the held-out validation set, the training set, or all (the fixed rule of `glowd train`)
    #[arg(long, value_enum, default_value = "all")]
    pub split: crate::data::Split,
    /// The --val-fraction the model was trained with (glowd train's default is 0.05)
    #[arg(long, default_value_t = crate::data::DEFAULT_VAL_FRACTION)]
    pub val_fraction: f64,
    /// Read at most this many images before splitting (as `glowd train --max-images`)
    #[arg(long)]
    pub max_images: Option<usize>,
    /// Print only the summary line
    #[arg(long)]
    pub summary: bool,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    #[command(flatten)]
    pub fit: FitArgs,
    #[command(flatten)]
    pub runtime: Runtime,
    
}

pub fn eval(args: EvalArgs) -> Result<usize> {
    let EvalArgs { model, data, format, split, val_fraction, max_images, summary, batch, fit, runtime } = args;
    let device = setup(&runtime)?;
    let glow = load_model(&model, device, &runtime)?;
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

