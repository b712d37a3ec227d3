//! What the commands share: device and thread flags, the crop/resize flags, loading image files.
use crate::codec::image::{self as imageio, Fit, Pixels};
use crate::model::device::parse_device;
use crate::model::{Glow, GlowConfig, Precision};
use anyhow::{bail, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use tch::Device;

#[derive(Args, Clone)]
pub struct Runtime {
    /// cpu, cuda, cuda:N or auto (cuda when available)
    #[arg(long, default_value = "cpu", global = true)]
    pub(crate) device: String,
    /// CPU threads for torch (0: torch's default)
    #[arg(long, default_value_t = 0, global = true)]
    pub(crate) threads: i32,
    /// fp32, or bf16: coupling networks in bfloat16 (CPUs with AMX-BF16 or AVX512-BF16, GPUs), the invertible parts
    /// in float32/float64
    #[arg(long, default_value = "fp32", global = true)]
    pub(crate) precision: Precision,
}

/// Loads a model folder for inference at the runtime's precision.
pub(crate) fn load_model(dir: &Path, device: Device, runtime: &Runtime) -> Result<Glow> {
    Ok(Glow::load(dir, device)?.with_precision(runtime.precision))
}

#[derive(Args, Clone)]
pub struct FitArgs {
    /// Centre-crop to a square and resize images to the model size (otherwise a wrong size is an error)
    #[arg(long)]
    pub(crate) resize: bool,
    /// Crop box left,top,right,bottom applied before resizing (CelebA faces: 10,25,80,95)
    #[arg(long, value_parser = parse_crop)]
    pub(crate) crop: Option<(u32, u32, u32, u32)>,
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

pub(crate) fn setup(runtime: &Runtime) -> Result<Device> {
    if runtime.threads > 0 {
        tch::set_num_threads(runtime.threads);
    }
    Ok(parse_device(&runtime.device)?)
}

pub(crate) fn per_level(values: &[f64], levels: usize) -> Result<Vec<f64>> {
    match values.len() {
        1 => Ok(vec![values[0]; levels]),
        n if n == levels => Ok(values.to_vec()),
        n => bail!("{n} temperatures given: give one, or one per level ({levels})"),
    }
}

pub(crate) fn stem(path: &Path) -> String {
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
