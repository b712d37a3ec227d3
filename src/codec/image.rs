//! Reading images into the model's pixel layout (u8, channels × height × width) and writing results as PNG.
use image::{DynamicImage, GenericImageView, ImageReader};
use std::path::{Path, PathBuf};

/// Input formats a pipeline may accept (`image_formats` in the pipeline file).
pub const KNOWN_FORMATS: [&str; 4] = ["png", "jpeg", "webp", "gif"];

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: cannot read image ({message})")]
    Unreadable { path: PathBuf, message: String },
    #[error("{path}: image is {width}x{height}x{channels}, the model expects {expected}x{expected}x{expected_channels} (pass --resize to fit it)")]
    WrongShape { path: PathBuf, width: u32, height: u32, channels: u8, expected: u32, expected_channels: u8 },
    #[error("{path}: {channels} channels, the model expects {expected}")]
    WrongChannels { path: PathBuf, channels: u8, expected: u8 },
    #[error("{path}: cannot write image ({message})")]
    Write { path: PathBuf, message: String },
}

/// How to bring an image to the model's square size.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fit {
    /// Crop box (left, top, right, bottom) applied first, e.g. the CelebA face box 10,25,80,95.
    pub crop: Option<(u32, u32, u32, u32)>,
    /// Centre-crop to a square and resize to the model size; without it, a wrong size is an error.
    pub resize: bool,
}

/// An image in the model's layout: `channels` planes of `size × size` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pixels {
    pub channels: u8,
    pub size: u32,
    pub data: Vec<u8>,
}

fn channel_count(img: &DynamicImage) -> u8 {
    img.color().channel_count()
}

/// Reads `path` and returns it as `channels × size × size` u8 planes.
pub fn load_image(path: &Path, channels: u8, size: u32, fit: Fit) -> Result<Pixels, ImageError> {
    let unreadable = |m: String| ImageError::Unreadable { path: path.into(), message: m };
    let img = ImageReader::open(path)
        .map_err(|e| unreadable(e.to_string()))?
        .with_guessed_format()
        .map_err(|e| unreadable(e.to_string()))?
        .decode()
        .map_err(|e| unreadable(e.to_string()))?;
    image_to_pixels(img, path, channels, size, fit)
}

pub fn image_to_pixels(
    mut img: DynamicImage,
    path: &Path,
    channels: u8,
    size: u32,
    fit: Fit,
) -> Result<Pixels, ImageError> {
    // Colour channels only: an alpha channel is dropped, grey vs colour must match the model.
    let found = channel_count(&img);
    let colour = if found >= 3 { 3 } else { 1 };
    if colour != channels {
        return Err(ImageError::WrongChannels { path: path.into(), channels: colour, expected: channels });
    }
    if let Some((l, t, r, b)) = fit.crop {
        let (w, h) = img.dimensions();
        if r <= l || b <= t || r > w || b > h {
            return Err(ImageError::Unreadable {
                path: path.into(),
                message: format!("crop box {l},{t},{r},{b} does not fit a {w}x{h} image"),
            });
        }
        img = img.crop_imm(l, t, r - l, b - t);
    }
    let (w, h) = img.dimensions();
    if w != size || h != size {
        if !fit.resize {
            return Err(ImageError::WrongShape {
                path: path.into(),
                width: w,
                height: h,
                channels: found,
                expected: size,
                expected_channels: channels,
            });
        }
        let side = w.min(h);
        img = img.crop_imm((w - side) / 2, (h - side) / 2, side, side);
        img = img.resize_exact(size, size, image::imageops::FilterType::Lanczos3);
    }
    let plane = (size * size) as usize;
    let mut data = vec![0u8; plane * channels as usize];
    if channels == 1 {
        data.copy_from_slice(img.to_luma8().as_raw());
    } else {
        for (i, px) in img.to_rgb8().pixels().enumerate() {
            for c in 0..3 {
                data[c * plane + i] = px.0[c];
            }
        }
    }
    Ok(Pixels { channels, size, data })
}

/// Converts planes back to an image.
pub fn pixels_to_image(p: &Pixels) -> DynamicImage {
    let plane = (p.size * p.size) as usize;
    if p.channels == 1 {
        DynamicImage::ImageLuma8(image::GrayImage::from_raw(p.size, p.size, p.data.clone()).expect("size"))
    } else {
        let mut rgb = Vec::with_capacity(plane * 3);
        for i in 0..plane {
            for c in 0..3 {
                rgb.push(p.data[c * plane + i]);
            }
        }
        DynamicImage::ImageRgb8(image::RgbImage::from_raw(p.size, p.size, rgb).expect("size"))
    }
}

/// Tiles images (all the same size) into a grid with `cols` columns and a 2-pixel gap.
pub fn grid(images: &[Pixels], cols: usize) -> DynamicImage {
    grid_labelled(images, cols, &[])
}

/// [`grid`] with a column of row labels on its left: `labels[r]` is written beside row r (black on white, the
/// [`label`](super::label) font, centred on the row's height); rows past the labels stay unlabelled. Without
/// labels (or with only empty ones) the picture is exactly [`grid`]'s.
pub fn grid_labelled(images: &[Pixels], cols: usize, labels: &[String]) -> DynamicImage {
    use super::label;
    let cols = cols.max(1).min(images.len().max(1));
    let rows = images.len().div_ceil(cols);
    let size = images.first().map(|p| p.size).unwrap_or(1);
    let gap = 2;
    let widest = labels.iter().take(rows).map(|l| label::text_width(l)).max().unwrap_or(0);
    let left = if widest == 0 { 0 } else { widest + 2 * gap };
    let w = left + cols as u32 * (size + gap) + gap;
    let h = rows as u32 * (size + gap) + gap;
    let mut canvas = image::RgbImage::from_pixel(w, h, image::Rgb([255, 255, 255]));
    for (i, p) in images.iter().enumerate() {
        let tile = pixels_to_image(p).to_rgb8();
        let x = left + gap + (i % cols) as u32 * (size + gap);
        let y = gap + (i / cols) as u32 * (size + gap);
        image::imageops::replace(&mut canvas, &tile, x as i64, y as i64);
    }
    for (r, text) in labels.iter().enumerate().take(rows) {
        let y = gap + r as u32 * (size + gap) + size.saturating_sub(label::CELL.1) / 2;
        label::draw_text(&mut canvas, gap, y, text, image::Rgb([0, 0, 0]));
    }
    DynamicImage::ImageRgb8(canvas)
}

/// Writes `img` enlarged `scale` times with nearest-neighbour sampling (pixels stay sharp: 32x32 faces are easier to
/// judge at 4x), or as is for a scale of 0 or 1.
pub fn save_png_scaled(img: &DynamicImage, path: &Path, scale: u32) -> Result<(), ImageError> {
    if scale <= 1 {
        return save_png(img, path);
    }
    let big = img.resize_exact(img.width() * scale, img.height() * scale, image::imageops::FilterType::Nearest);
    save_png(&big, path)
}

pub fn save_png(img: &DynamicImage, path: &Path) -> Result<(), ImageError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| ImageError::Write { path: path.into(), message: e.to_string() })?;
    }
    img.save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| ImageError::Write { path: path.into(), message: e.to_string() })
}

/// Image files under `dir`, recursively, sorted by path (so runs are reproducible).
pub fn list_images(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = walkdir::WalkDir::new(dir)
        .follow_links(true)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .filter(|p| is_image_path(p))
        .collect();
    files.sort();
    files
}

pub fn is_image_path(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase()).as_deref(),
        Some("png" | "jpg" | "jpeg" | "webp")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_widen_the_grid_on_the_left_and_leave_the_tiles_alone() {
        let tile = |v: u8| Pixels { channels: 3, size: 10, data: vec![v; 300] };
        let tiles = [tile(10), tile(20), tile(30)];
        let plain = grid(&tiles, 2).to_rgb8();
        assert_eq!(plain.dimensions(), (26, 26));
        assert_eq!(grid_labelled(&tiles, 2, &[String::new()]).to_rgb8(), plain);
        let labelled = grid_labelled(&tiles, 2, &["ab".into(), "c".into(), "unused".into()]).to_rgb8();
        let left = crate::codec::label::text_width("ab") + 4;
        assert_eq!(labelled.dimensions(), (26 + left, 26));
        for (x, y) in [(2, 2), (14, 2), (2, 14)] {
            assert_eq!(labelled.get_pixel(x + left, y), plain.get_pixel(x, y));
        }
        // The label column holds some black, and nothing else but white.
        let column: Vec<[u8; 3]> = (0..left).flat_map(|x| (0..26).map(move |y| (x, y))).map(|(x, y)| labelled.get_pixel(x, y).0).collect();
        assert!(column.contains(&[0, 0, 0]) && column.iter().all(|p| *p == [0, 0, 0] || *p == [255, 255, 255]));
    }

    #[test]
    fn planes_round_trip_through_an_image() {
        let data: Vec<u8> = (0..3 * 4 * 4).map(|i| (i * 5) as u8).collect();
        let p = Pixels { channels: 3, size: 4, data };
        let img = pixels_to_image(&p);
        let back = image_to_pixels(img, Path::new("x"), 3, 4, Fit::default()).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn wrong_size_and_channels_are_named_errors() {
        let img = DynamicImage::ImageRgb8(image::RgbImage::new(5, 7));
        let err = image_to_pixels(img.clone(), Path::new("a.png"), 3, 4, Fit::default()).unwrap_err();
        assert!(err.to_string().contains("a.png") && err.to_string().contains("5x7"), "{err}");
        let err = image_to_pixels(img.clone(), Path::new("a.png"), 1, 4, Fit::default()).unwrap_err();
        assert!(matches!(err, ImageError::WrongChannels { .. }), "{err}");
        let ok = image_to_pixels(img, Path::new("a.png"), 3, 4, Fit { resize: true, crop: None }).unwrap();
        assert_eq!(ok.data.len(), 48);
    }
}
