//! Untrusted image bytes through the pipeline's decode, crop and resize: Ok with exactly the model's shape, or a
//! StageError with a DLQ kind; never a panic, an abort or an allocation past the configured limits.
#![no_main]
use glowd::pipeline::decode::decode_image;
use glowd::settings::ImageSettings;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 6 {
        return;
    }
    // The first bytes choose the settings: a crop box, resize on or off, channels, size.
    let (head, bytes) = data.split_at(6);
    let mut settings = ImageSettings {
        max_pixels: 4 * 1024 * 1024,
        max_side: 4096,
        max_decode_bytes: 64 * 1024 * 1024,
        formats: vec!["png".into(), "jpeg".into(), "webp".into(), "gif".into()],
        ..ImageSettings::default()
    };
    if head[0] & 1 == 1 {
        let (l, t) = (head[1] as u32, head[2] as u32);
        settings.crop = Some([l, t, l + head[3] as u32, t + head[4] as u32]);
    }
    settings.resize = head[0] & 2 == 2;
    let channels = if head[5] & 1 == 1 { 1 } else { 3 };
    let size = 8u32 << (head[5] >> 6);
    if let Ok(p) = decode_image(bytes, &settings, channels, size, "fuzz") {
        assert_eq!((p.channels, p.size), (channels, size));
        assert_eq!(p.data.len(), (channels as u32 * size * size) as usize);
    }
});
