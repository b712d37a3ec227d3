//! Output encoding: images (PNG, lossless WebP), the interpolation GIF, latents as safetensors. All deterministic:
//! the same pixels and numbers give the same bytes.
use crate::imageio::{pixels_to_image, Pixels};
use crate::job::{ImageFormat, MediaType};
use crate::worker::LatentData;
use std::io::Cursor;

/// Format tag written into latents files (the same as `glowd encode`'s).
pub const LATENTS_FORMAT: &str = "glowd-latents-v1";

pub fn image_bytes(p: &Pixels, format: ImageFormat) -> Result<Vec<u8>, String> {
    let img = pixels_to_image(p);
    let mut out = Cursor::new(Vec::new());
    match format {
        ImageFormat::Png => img.write_to(&mut out, image::ImageFormat::Png).map_err(|e| e.to_string())?,
        ImageFormat::Webp => {
            let enc = image::codecs::webp::WebPEncoder::new_lossless(&mut out);
            img.write_with_encoder(enc).map_err(|e| e.to_string())?
        }
    }
    Ok(out.into_inner())
}

pub fn media_type(format: ImageFormat) -> MediaType {
    format.media_type()
}

/// An animated GIF of the frames, forth and back (as `glowd interpolate --gif`), looping.
pub fn gif_bytes(frames: &[Pixels]) -> Result<Vec<u8>, String> {
    use image::codecs::gif::{GifEncoder, Repeat};
    let mut buf = Vec::new();
    {
        let mut enc = GifEncoder::new_with_speed(&mut buf, 10);
        enc.set_repeat(Repeat::Infinite).map_err(|e| e.to_string())?;
        let order = frames.iter().chain(frames.iter().rev().skip(1).take(frames.len().saturating_sub(2)));
        for p in order {
            let rgba = pixels_to_image(p).to_rgba8();
            enc.encode_frame(image::Frame::from_parts(rgba, 0, 0, image::Delay::from_numer_denom_ms(120, 1)))
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(buf)
}

/// One image's latents as safetensors, the format of `glowd encode` (`z.0` … `z.{L-1}`, finest first, no batch
/// dimension; metadata `format` and `bits_per_dim`), readable by `glowd decode`. The header is written here rather
/// than by `safetensors::serialize`, whose metadata map is a `HashMap` and so comes out in a different order from
/// run to run: these bytes must not change when a job is redone.
pub fn latents_bytes(latents: &LatentData, bits_per_dim: f64) -> Result<Vec<u8>, String> {
    use serde_json::{json, Map, Value};
    let mut header = Map::new();
    header.insert("__metadata__".into(), json!({"bits_per_dim": format!("{bits_per_dim}"), "format": LATENTS_FORMAT}));
    let mut data = Vec::new();
    for (i, (shape, values)) in latents.levels.iter().enumerate() {
        if shape.iter().product::<usize>() != values.len() {
            return Err(format!("level {i}: shape {shape:?} does not hold {} values", values.len()));
        }
        let start = data.len();
        data.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        header.insert(format!("z.{i}"), json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}));
    }
    let mut head = serde_json::to_vec(&Value::Object(header)).map_err(|e| e.to_string())?;
    head.resize(head.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + head.len() + data.len());
    out.extend((head.len() as u64).to_le_bytes());
    out.extend(head);
    out.extend(data);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latents_are_valid_safetensors_and_stable() {
        let l = LatentData { levels: vec![([2, 1, 1], vec![1.0, -2.0]), ([1, 2, 2], vec![0.5; 4])] };
        let a = latents_bytes(&l, 3.25).unwrap();
        assert_eq!(a, latents_bytes(&l, 3.25).unwrap());
        let st = safetensors::SafeTensors::deserialize(&a).unwrap();
        assert_eq!(st.tensor("z.0").unwrap().shape(), &[2, 1, 1]);
        assert_eq!(st.tensor("z.1").unwrap().data().len(), 16);
        let (_, meta) = safetensors::SafeTensors::read_metadata(&a).unwrap();
        assert_eq!(meta.metadata().as_ref().unwrap()["format"], LATENTS_FORMAT);
    }
}
