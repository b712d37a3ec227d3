//! File formats that the CLI, the pipeline and the tools share: images ([`image`]), latent files ([`latents`]) and
//! animated GIFs ([`gif`]), and a bitmap font for labels on pictures ([`label`]). Plain bytes and pixels in and out:
//! no tch, tokio, Kafka or S3 type.
pub mod gif;
pub mod image;
pub mod label;
pub mod latents;
