//! `grid` and `compare`: pictures in, pictures or verdicts out (no model).
use crate::codec::image::{self as imageio, Fit, Pixels};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct GridArgs {
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    #[arg(long, default_value_t = 8)]
    pub cols: usize,
    /// Enlarge the written picture N times (nearest neighbour), tiles, gaps and labels alike
    #[arg(long, default_value_t = 1)]
    pub scale: u32,
    /// A label for the next row, top to bottom (repeat it, one per row; "" leaves a row unlabelled), written in
    /// a column on the left
    #[arg(long = "label", value_name = "TEXT")]
    pub labels: Vec<String>,
    #[arg(long)]
    pub out: PathBuf,
    
}

pub fn grid(args: GridArgs) -> Result<usize> {
    let GridArgs { images, cols, scale, labels, out } = args;
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
    let rows = tiles.len().div_ceil(cols.max(1).min(tiles.len()));
    if labels.len() > rows {
        bail!("{} labels for {rows} rows of {} image(s) at --cols {cols}", labels.len(), tiles.len());
    }
    imageio::save_png_scaled(&imageio::grid_labelled(&tiles, cols, &labels), &out, scale)?;
    Ok(failed)

}

#[derive(Args)]
pub struct CompareArgs {
    #[arg(required = true, num_args = 2..)]
    pub pairs: Vec<PathBuf>,
    
}

pub fn compare(args: CompareArgs) -> Result<usize> {
    let CompareArgs { pairs } = args;
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

