//! Image stacks stored as NumPy `.npy` arrays (e.g. scikit-image's `lfw_subset.npy`).
use super::error::DataError;
use image::DynamicImage;
use std::path::Path;
use tch::{Kind, Tensor};

/// Reads (N,H,W), (N,H,W,C) or (N,C,H,W) arrays of u8, or of floats in [0, 1], as images.
pub fn read_images(path: &Path) -> Result<Vec<DynamicImage>, DataError> {
    let fail = |m: String| DataError::File { path: path.into(), message: m };
    let t = Tensor::read_npy(path).map_err(|e| fail(format!("not a readable .npy array ({e})")))?;
    let t = match t.kind() {
        Kind::Uint8 => t,
        Kind::Float | Kind::Double | Kind::Half => (t.to_kind(Kind::Double).clamp(0.0, 1.0) * 255.0).round().to_kind(Kind::Uint8),
        other => return Err(fail(format!("dtype {other:?} is not supported (u8 or float in [0,1])"))),
    };
    // Bring everything to N,H,W,C.
    let size = t.size();
    let nhwc = match size.as_slice() {
        [_, _, _] => t.unsqueeze(-1),
        [_, _, _, c] if *c == 1 || *c == 3 || *c == 4 => t,
        [_, c, _, _] if *c == 1 || *c == 3 || *c == 4 => t.permute([0, 2, 3, 1]),
        other => return Err(fail(format!("shape {other:?} is not an image stack"))),
    }
    .contiguous();
    let (n, h, w, c) = nhwc.size4().expect("4-d");
    let data = Vec::<u8>::try_from(nhwc.view([-1])).map_err(|e| fail(e.to_string()))?;
    let per = (h * w * c) as usize;
    Ok((0..n as usize)
        .map(|i| {
            let px = data[i * per..(i + 1) * per].to_vec();
            match c {
                1 => DynamicImage::ImageLuma8(image::GrayImage::from_raw(w as u32, h as u32, px).expect("size")),
                3 => DynamicImage::ImageRgb8(image::RgbImage::from_raw(w as u32, h as u32, px).expect("size")),
                _ => DynamicImage::ImageRgba8(image::RgbaImage::from_raw(w as u32, h as u32, px).expect("size")),
            }
        })
        .collect())
}
