//! Helpers of the pipeline tests: a tiny model with made-up attribute directions, and test images.
use super::model::{ready_model, tiny};
use glowd::model::directions::{model_fingerprint, Directions, Provenance};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

pub const ATTRS: [&str; 2] = ["Smiling", "Eyeglasses"];

/// A tiny model with two made-up directions, saved as `<root>/faces/` (so its name is `faces`, version 1).
pub fn model_with_directions(root: &Path) -> PathBuf {
    model_with_directions_of(root, &["steps=2"])
}

/// The same with other config overrides (a heavier model keeps a daemon busy long enough to be killed mid-batch).
pub fn model_with_directions_of(root: &Path, set: &[&str]) -> PathBuf {
    let dir = root.join("faces");
    let glow = ready_model(tiny(set), 21);
    glow.save(&dir).unwrap();
    let mut d = Directions::empty(model_fingerprint(&dir).unwrap());
    tch::manual_seed(5);
    for a in ATTRS {
        let v: Vec<Tensor> = glow
            .config
            .latent_shapes()
            .iter()
            .map(|&(c, h, w)| Tensor::randn([1, c, h, w], (Kind::Float, Device::Cpu)) * 0.3)
            .collect();
        let prov = Provenance {
            positives: 1,
            negatives: 1,
            source: "test".into(),
            created: "2026-01-01T00:00:00Z".into(),
            norm: 1.0,
        };
        d.summary.attributes.insert(a.to_string(), prov);
        d.vectors.insert(a.to_string(), v);
    }
    d.save(&dir).unwrap();
    dir
}

/// A deterministic RGB PNG's bytes.
pub fn png_bytes(w: u32, h: u32, seed: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 7 + seed * 31) as u8, (y * 5 + seed) as u8, ((x * y + seed) % 256) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img).write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A valid PNG whose header declares 100000 x 100000 pixels (CRC fixed up): a decompression-bomb stand-in.
pub fn png_bomb() -> Vec<u8> {
    let mut bomb = png_bytes(1, 1, 0);
    bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let mut crc = flate2::Crc::new();
    crc.update(&bomb[12..29]);
    bomb[29..33].copy_from_slice(&crc.sum().to_be_bytes());
    bomb
}

pub fn grey_png() -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageLuma8(image::GrayImage::from_pixel(32, 32, image::Luma([9])))
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

/// A valid 32x32 GIF (a format the pipeline recognises but does not accept by default).
pub fn gif_bytes() -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(image::RgbImage::new(32, 32)).write_to(&mut out, image::ImageFormat::Gif).unwrap();
    out.into_inner()
}
