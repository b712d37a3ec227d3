//! The interpolation GIF: the frames forth and back (0, 1, …, n−1, n−2, …, 1), 120 ms each, looping forever.
//! `glowd interpolate --gif` and the pipeline's interpolate jobs write exactly these bytes.
use super::image::{pixels_to_image, Pixels};

/// Time each frame is shown.
pub const FRAME_MS: u32 = 120;

/// Frame indices of the loop: forth, then back without repeating either end (the loop closes on frame 0).
pub fn frame_order(n: usize) -> Vec<usize> {
    (0..n).chain((1..n.saturating_sub(1)).rev()).collect()
}

/// The GIF's bytes.
pub fn gif_bytes(frames: &[Pixels]) -> Result<Vec<u8>, image::ImageError> {
    use image::codecs::gif::{GifEncoder, Repeat};
    let mut buf = Vec::new();
    {
        let mut enc = GifEncoder::new_with_speed(&mut buf, 10);
        enc.set_repeat(Repeat::Infinite)?;
        for i in frame_order(frames.len()) {
            let rgba = pixels_to_image(&frames[i]).to_rgba8();
            enc.encode_frame(image::Frame::from_parts(rgba, 0, 0, image::Delay::from_numer_denom_ms(FRAME_MS, 1)))?;
        }
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loop_goes_forth_and_back_without_repeating_its_ends() {
        assert_eq!(frame_order(4), vec![0, 1, 2, 3, 2, 1]);
        assert_eq!(frame_order(2), vec![0, 1]);
        assert_eq!(frame_order(1), vec![0]);
        assert!(frame_order(0).is_empty());
    }
}
