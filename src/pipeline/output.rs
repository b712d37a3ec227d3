//! Output encoding of result images (PNG, lossless WebP); the GIF and latents files come from [`crate::codec`].
//! Deterministic: the same pixels give the same bytes.
use crate::codec::image::{pixels_to_image, Pixels};
use crate::job::{ImageFormat, MediaType};
use std::io::Cursor;

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
