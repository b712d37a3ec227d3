//! Untrusted image bytes → the model's pixel planes, defensively (docs/reliability.md, contract item 8): a byte cap, a format
//! allow-list checked against the bytes (never the key's extension), the header's dimensions checked before any
//! pixel is decoded, `image::Limits` on the decoder (width/height strict, `max_alloc`), then the crop box and the
//! resize to the model.
use super::error::StageError;
use crate::settings::ImageSettings;
use crate::codec::image::{image_to_pixels, Fit, ImageError, Pixels};
use crate::job::{ErrorKind, Stage};
use image::{ImageFormat, ImageReader, Limits};
use std::io::Cursor;
use std::path::Path;

pub use crate::codec::image::KNOWN_FORMATS;

fn format_name(f: ImageFormat) -> &'static str {
    match f {
        ImageFormat::Png => "png",
        ImageFormat::Jpeg => "jpeg",
        ImageFormat::WebP => "webp",
        ImageFormat::Gif => "gif",
        _ => "other",
    }
}

/// What an image's header says, read before any pixel is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub width: u32,
    pub height: u32,
    /// The decoder's output buffer: width × height × bytes per pixel of the decoded colour type (a 4096x4096
    /// 16-bit RGBA PNG: 128 MiB, however small the file).
    pub decoded_bytes: u64,
}

impl Header {
    /// What decoding and fitting this image holds at its peak: the decoder's buffer and the one copy that cropping
    /// (the crop box, or the centre crop before the resize) makes of it; the resized result is the model's size.
    pub fn peak_bytes(&self) -> u64 {
        self.decoded_bytes.saturating_mul(2)
    }
}

/// The checks that need only the bytes and the header: size, format, dimensions. Allocates nothing in proportion
/// to the image.
pub fn read_header(bytes: &[u8], settings: &ImageSettings, label: &str) -> Result<Header, StageError> {
    Ok(checked_header(bytes, settings, label)?.0)
}

fn checked_header(bytes: &[u8], settings: &ImageSettings, label: &str) -> Result<(Header, ImageFormat, Limits), StageError> {
    let dead = |kind, m: String| StageError::dead(kind, Stage::Decode, format!("{label}: {m}"));
    if bytes.is_empty() {
        return Err(dead(ErrorKind::EmptyInput, "the object is empty (0 bytes)".into()));
    }
    if bytes.len() as u64 > settings.max_input_bytes {
        return Err(dead(
            ErrorKind::InputTooLarge,
            format!("{} bytes, over the {}-byte limit", bytes.len(), settings.max_input_bytes),
        ));
    }
    let allowed = settings.formats.join(", ");
    let format = image::guess_format(bytes)
        .map_err(|_| dead(ErrorKind::UnsupportedFormat, format!("not a recognised image (accepted: {allowed})")))?;
    let name = format_name(format);
    if !settings.formats.iter().any(|f| f == name) {
        return Err(dead(ErrorKind::UnsupportedFormat, format!("{name} images are not accepted (accepted: {allowed})")));
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(settings.max_side);
    limits.max_image_height = Some(settings.max_side);
    limits.max_alloc = Some(settings.max_decode_bytes);
    // The header first: a small file declaring a huge image is refused before any allocation.
    let mut r = ImageReader::with_format(Cursor::new(bytes), format);
    r.limits(limits.clone());
    let decoder = r.into_decoder().map_err(|e| map_image_error(e, label))?;
    let (w, h) = image::ImageDecoder::dimensions(&decoder);
    let decoded_bytes = image::ImageDecoder::total_bytes(&decoder);
    if w == 0 || h == 0 {
        return Err(dead(ErrorKind::CorruptImage, format!("{w}x{h} image")));
    }
    if w > settings.max_side || h > settings.max_side || u64::from(w) * u64::from(h) > settings.max_pixels {
        return Err(dead(
            ErrorKind::OverPixelLimit,
            format!("{w}x{h} image, over the limits ({} pixels, {} per side)", settings.max_pixels, settings.max_side),
        ));
    }
    Ok((Header { width: w, height: h, decoded_bytes }, format, limits))
}

/// Decodes `bytes` (read from `label`, an s3:// URI, used in messages) to `channels × size × size` planes.
pub fn decode_image(
    bytes: &[u8],
    settings: &ImageSettings,
    channels: u8,
    size: u32,
    label: &str,
) -> Result<Pixels, StageError> {
    let (_, format, limits) = checked_header(bytes, settings, label)?;
    let mut r = ImageReader::with_format(Cursor::new(bytes), format);
    r.limits(limits);
    let img = r.decode().map_err(|e| map_image_error(e, label))?;
    let fit = Fit { crop: settings.crop.map(|[l, t, r, b]| (l, t, r, b)), resize: settings.resize };
    image_to_pixels(img, Path::new(label), channels, size, fit).map_err(|e| match e {
        ImageError::WrongChannels { .. } => StageError::dead(ErrorKind::WrongChannels, Stage::Decode, e.to_string()),
        other => StageError::dead(ErrorKind::WrongSize, Stage::Decode, other.to_string()),
    })
}

fn map_image_error(e: image::ImageError, label: &str) -> StageError {
    use image::ImageError as E;
    let (kind, m) = match &e {
        E::Limits(_) => (ErrorKind::OverPixelLimit, format!("over the decoding limits ({e})")),
        E::Unsupported(_) => (ErrorKind::UnsupportedFormat, e.to_string()),
        E::Decoding(_) | E::Parameter(_) => (ErrorKind::CorruptImage, format!("cannot decode ({e})")),
        E::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            (ErrorKind::CorruptImage, "truncated image data".to_string())
        }
        _ => (ErrorKind::CorruptImage, format!("cannot decode ({e})")),
    };
    StageError::dead(kind, Stage::Decode, format!("{label}: {m}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_pixel(w, h, image::Rgb([10, 20, 30]));
        let mut out = Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb8(img).write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn settings() -> ImageSettings {
        ImageSettings { max_pixels: 10_000, max_side: 200, ..ImageSettings::default() }
    }

    #[test]
    fn bad_bytes_get_their_kind() {
        let s = settings();
        let kind = |b: &[u8]| decode_image(b, &s, 3, 8, "s3://b/k").unwrap_err().kind;
        assert_eq!(kind(b""), "empty_input");
        assert_eq!(kind(b"hello, not an image"), "unsupported_format");
        let good = png(8, 8);
        assert_eq!(kind(&good[..good.len() / 2]), "corrupt_image");
        assert_eq!(kind(&png(150, 150)), "over_pixel_limit");
        assert_eq!(kind(&png(300, 2)), "over_pixel_limit");
        let mut gif = Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb8(image::RgbImage::new(4, 4)).write_to(&mut gif, ImageFormat::Gif).unwrap();
        assert_eq!(kind(&gif.into_inner()), "unsupported_format");
        assert!(decode_image(&good, &s, 3, 8, "s3://b/k").is_ok());
        assert_eq!(decode_image(&good, &s, 1, 8, "s3://b/k").unwrap_err().kind, "wrong_channels");
    }

    #[test]
    fn the_header_gives_the_decoded_size_of_a_16_bit_image_before_decoding() {
        let img = image::ImageBuffer::<image::Rgba<u16>, _>::from_pixel(100, 60, image::Rgba([1, 2, 3, 4]));
        let mut out = Cursor::new(Vec::new());
        image::DynamicImage::ImageRgba16(img).write_to(&mut out, ImageFormat::Png).unwrap();
        let h = read_header(&out.into_inner(), &settings(), "s3://b/k").unwrap();
        assert_eq!((h.width, h.height, h.decoded_bytes), (100, 60, 100 * 60 * 8));
        assert_eq!(h.peak_bytes(), 2 * 100 * 60 * 8);
        assert_eq!(read_header(&png(8, 8), &settings(), "k").unwrap().decoded_bytes, 8 * 8 * 3);
    }

    #[test]
    fn a_huge_declared_size_is_refused_from_the_header() {
        // A valid PNG signature and IHDR declaring 100000 x 100000, and nothing else.
        let mut bytes = png(1, 1);
        bytes[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        bytes[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(&bytes[12..29]);
        bytes[29..33].copy_from_slice(&crc.sum().to_be_bytes());
        let t = std::time::Instant::now();
        let e = decode_image(&bytes, &settings(), 3, 8, "s3://b/bomb.png").unwrap_err();
        assert_eq!(e.kind, "over_pixel_limit", "{e}");
        assert!(t.elapsed().as_millis() < 50);
    }
}
