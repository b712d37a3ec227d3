//! Training and evaluation data: a folder of images, the CelebA layout, MNIST-style IDX files and `.npy` arrays,
//! loaded into memory as u8 planes of the model's size, with a stable train/validation split. Images of another
//! size are resized only when the target's [`Fit`] asks for it (`--resize`, or a `--crop` box); otherwise they are
//! reported and skipped like unreadable files.
use crate::codec::image::{self as imageio, Fit, Pixels};
use image::DynamicImage;
use std::path::{Path, PathBuf};

/// Fraction of a dataset `glowd train` holds out for validation unless told otherwise (and `glowd eval` assumes).
pub const DEFAULT_VAL_FRACTION: f64 = 0.05;

pub mod attributes;
pub mod idx;
pub mod npy;
mod error;

pub use error::DataError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Decide from the path: a folder with list_attr_celeba.txt is CelebA, a folder is images, *.npy is npy,
    /// *-idx3-ubyte(.gz) is IDX
    Auto,
    /// A folder of JPEG/PNG/WebP images, searched recursively
    Folder,
    /// CelebA: an image folder (`img/` or `img_align_celeba/`) beside `list_attr_celeba.txt`
    Celeba,
    /// MNIST / Fashion-MNIST IDX image file (optionally gzipped)
    Idx,
    /// A NumPy array: (N,H,W), (N,H,W,C) or (N,C,H,W); u8, or floats in [0,1]
    Npy,
}

/// Which part of a dataset the fixed split rule ([`Dataset::split`]) selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Split {
    /// The held-out images (what training reports as validation bits/dim)
    Validation,
    /// The images training learns from
    Train,
    /// Every image
    All,
}

/// What to bring every image to.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub channels: u8,
    pub size: u32,
    pub fit: Fit,
}

/// Images in memory with their names (file names, or `<file>#<index>` for arrays).
pub struct Dataset {
    pub names: Vec<String>,
    pub images: Vec<Pixels>,
    /// Inputs that could not be used, with the reason, for the report.
    pub skipped: Vec<String>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// One line for the log: how many were skipped and the first few reasons.
    pub fn skipped_report(&self) -> Option<String> {
        if self.skipped.is_empty() {
            return None;
        }
        let first: Vec<&str> = self.skipped.iter().take(3).map(String::as_str).collect();
        Some(format!("skipped {} unusable input(s), e.g. {}", self.skipped.len(), first.join("; ")))
    }

    /// The fixed split: an image is in validation when a hash of its name falls below `fraction`. It depends on
    /// the name only, so adding or reordering files never moves an image between the sets.
    pub fn split(self, fraction: f64) -> (Dataset, Dataset) {
        let mut train = Dataset { names: vec![], images: vec![], skipped: self.skipped };
        let mut val = Dataset { names: vec![], images: vec![], skipped: vec![] };
        for (name, img) in self.names.into_iter().zip(self.images) {
            let h = fnv1a(name.as_bytes());
            if (h % 10_000) as f64 / 10_000.0 < fraction {
                val.names.push(name);
                val.images.push(img);
            } else {
                train.names.push(name);
                train.images.push(img);
            }
        }
        (train, val)
    }

    /// The part of the dataset `split` names, by the same rule and fraction as training's [`Dataset::split`].
    pub fn select(self, split: Split, fraction: f64) -> Dataset {
        match split {
            Split::All => self,
            Split::Train => self.split(fraction).0,
            Split::Validation => {
                let skipped = self.skipped.clone();
                Dataset { skipped, ..self.split(fraction).1 }
            }
        }
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

pub fn detect(path: &Path) -> Format {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if path.is_dir() {
        if path.join("list_attr_celeba.txt").exists() {
            Format::Celeba
        } else {
            Format::Folder
        }
    } else if name.ends_with(".npy") {
        Format::Npy
    } else if name.contains("idx") || name.contains("ubyte") {
        Format::Idx
    } else {
        Format::Folder
    }
}

/// Loads up to `limit` images from `path`.
pub fn load(path: &Path, format: Format, target: Target, limit: usize) -> Result<Dataset, DataError> {
    let format = if format == Format::Auto { detect(path) } else { format };
    let mut ds = Dataset { names: vec![], images: vec![], skipped: vec![] };
    match format {
        Format::Folder | Format::Auto => load_files(&imageio::list_images(path), path, target, limit, &mut ds),
        Format::Celeba => {
            let dir = ["img_align_celeba", "img"].iter().map(|d| path.join(d)).find(|d| d.is_dir()).ok_or_else(
                || DataError::File { path: path.into(), message: "no img/ or img_align_celeba/ folder".into() },
            )?;
            let attrs = attributes::read_celeba(&path.join("list_attr_celeba.txt"))?;
            let files: Vec<PathBuf> = attrs.files.iter().map(|f| dir.join(f)).collect();
            load_files(&files, path, target, limit, &mut ds)
        }
        Format::Idx => {
            let (n, h, w, data) = idx::read_images(path)?;
            let plane = h * w;
            for i in 0..n.min(limit) {
                let img = image::GrayImage::from_raw(w as u32, h as u32, data[i * plane..(i + 1) * plane].to_vec())
                    .expect("sizes checked by the reader");
                push_image(DynamicImage::ImageLuma8(img), format!("{}#{i}", path.display()), target, &mut ds);
            }
        }
        Format::Npy => {
            for (i, img) in npy::read_images(path)?.into_iter().take(limit).enumerate() {
                push_image(img, format!("{}#{i}", path.display()), target, &mut ds);
            }
        }
    }
    if ds.images.is_empty() {
        return Err(DataError::Empty { path: path.into(), report: ds.skipped_report() });
    }
    Ok(ds)
}

fn load_files(files: &[PathBuf], root: &Path, target: Target, limit: usize, ds: &mut Dataset) {
    for file in files {
        if ds.images.len() >= limit {
            break;
        }
        let name = file.strip_prefix(root).unwrap_or(file).display().to_string();
        match imageio::load_image(file, target.channels, target.size, target.fit) {
            Ok(p) => {
                ds.names.push(name);
                ds.images.push(p);
            }
            Err(e) => ds.skipped.push(e.to_string()),
        }
    }
}

/// Arrays carry their own channel count: grey arrays feed colour models as grey RGB and vice versa. Their size
/// follows the same rule as files: resized only when `target.fit` says so, otherwise reported and skipped.
fn push_image(img: DynamicImage, name: String, target: Target, ds: &mut Dataset) {
    let img = if target.channels == 3 {
        DynamicImage::ImageRgb8(img.to_rgb8())
    } else {
        DynamicImage::ImageLuma8(img.to_luma8())
    };
    match imageio::image_to_pixels(img, Path::new(&name), target.channels, target.size, target.fit) {
        Ok(p) => {
            ds.names.push(name);
            ds.images.push(p);
        }
        Err(e) => ds.skipped.push(e.to_string()),
    }
}

/// Mirror image left to right (training augmentation).
pub fn hflip(p: &Pixels) -> Pixels {
    let s = p.size as usize;
    let mut data = p.data.clone();
    for plane in data.chunks_mut(s * s) {
        for row in plane.chunks_mut(s) {
            row.reverse();
        }
    }
    Pixels { data, ..p.clone() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_stable_and_respects_the_fraction() {
        let make = |names: Vec<String>| Dataset {
            images: names.iter().map(|_| Pixels { channels: 1, size: 1, data: vec![0] }).collect(),
            names,
            skipped: vec![],
        };
        let names: Vec<String> = (0..2000).map(|i| format!("{i:06}.jpg")).collect();
        let (_, val) = make(names.clone()).split(0.1);
        assert!((150..250).contains(&val.len()), "{}", val.len());
        let mut reversed = names.clone();
        reversed.reverse();
        reversed.truncate(1500);
        let (_, val2) = make(reversed).split(0.1);
        for n in &val2.names {
            assert!(val.names.contains(n), "{n} moved sets");
        }
    }

    #[test]
    fn hflip_mirrors_rows() {
        let p = Pixels { channels: 1, size: 2, data: vec![1, 2, 3, 4] };
        assert_eq!(hflip(&p).data, vec![2, 1, 4, 3]);
        assert_eq!(hflip(&hflip(&p)), p);
    }
}
