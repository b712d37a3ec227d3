//! The device thread's work: loading and warming up models, and running batches of ops on them.
use super::*;
use crate::codec::image::Pixels;
use crate::model::batch::{pixels_to_tensor, tensor_to_pixels};
use crate::model::device::parse_device;
use crate::model::directions::{self, model_fingerprint, Directions};
use crate::model::{Glow, ModelError};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::panic::{catch_unwind, AssertUnwindSafe};
use tch::{Device, Tensor};
use tokio::sync::mpsc;


pub(super) struct LoadedModel {
    pub(super) glow: Glow,
    pub(super) directions: Option<Directions>,
    pub(super) info: ModelInfo,
}

/// Loads and warms up every model; also returns the slowest warm-up pass (what the watchdog's bound is sized from).
pub(super) fn load_models(
    device: &str,
    specs: &[ModelSpec],
    max_batch: usize,
    precision: crate::precision::Precision,
) -> Result<(Device, Vec<LoadedModel>, std::time::Duration), DeviceError> {
    let device = parse_device(device).map_err(|e| DeviceError::Load {
        name: "-".into(),
        version: "-".into(),
        path: "-".into(),
        message: e.to_string(),
    })?;
    let mut out = Vec::new();
    let mut slowest_pass = std::time::Duration::ZERO;
    for spec in specs {
        let fail = |m: String| DeviceError::Load {
            name: spec.name.clone(),
            version: spec.version.clone(),
            path: spec.path.display().to_string(),
            message: m,
        };
        let (glow, directions, info) = load_model(spec, device, precision).map_err(fail)?;
        let c = &glow.config;
        // Warm-up at the largest batch: allocations and kernel choices happen now, not on the first job, and a
        // batch size the device cannot hold fails here instead of in service.
        let s = c.image_size;
        let pixels = Tensor::zeros([max_batch as i64, c.channels, s, s], (tch::Kind::Uint8, Device::Cpu));
        let warm = catch_unwind(AssertUnwindSafe(|| -> Result<(), ModelError> {
            let started = std::time::Instant::now();
            let z = glow.encode(&pixels)?;
            let encoded = std::time::Instant::now();
            let _ = glow.decode(&z.z)?;
            slowest_pass = slowest_pass.max(encoded - started).max(encoded.elapsed());
            Ok(())
        }));
        match warm {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(fail(format!("warm-up at batch {max_batch}: {e}"))),
            Err(p) => return Err(fail(format!("warm-up at batch {max_batch}: {}", panic_message(&p)))),
        }
        tracing::info!(model = %spec.name, version = %spec.version, path = %spec.path.display(),
            attributes = info.attributes.len(), "model loaded");
        out.push(LoadedModel { glow, directions, info });
    }
    Ok((device, out, slowest_pass))
}

/// One model folder at `precision` on `device`: the model, its attribute directions, and what the pipeline (or the
/// studio) knows of it. The error is the message only; callers say which model.
pub fn load_model(
    spec: &ModelSpec,
    device: Device,
    precision: crate::precision::Precision,
) -> Result<(Glow, Option<Directions>, ModelInfo), String> {
    let glow = Glow::load(&spec.path, device).map_err(|e| e.to_string())?.with_precision(precision);
    let directions = Directions::load(&spec.path, &glow.config).map_err(|e| e.to_string())?;
    let fingerprint = model_fingerprint(&spec.path).map_err(|e| e.to_string())?;
    let c = &glow.config;
    let info = ModelInfo {
        name: spec.name.clone(),
        version: spec.version.clone(),
        image_size: c.image_size as u32,
        channels: c.channels as u8,
        levels: c.levels as usize,
        latent_shapes: c.latent_shapes().iter().map(|&(a, b, d)| [a as usize, b as usize, d as usize]).collect(),
        attributes: directions.as_ref().map(|d| d.vectors.keys().cloned().collect()).unwrap_or_default(),
        fingerprint: fingerprint.rsplit(':').next().unwrap_or(&fingerprint).to_string(),
    };
    Ok((glow, directions, info))
}

pub(super) fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.lines().next().unwrap_or("").to_string()
    } else {
        "unknown panic".into()
    }
}

pub(super) fn serve(rx: mpsc::Receiver<Batch>, models: &[LoadedModel], max_batch: usize, watch: &DeviceWatch) {
    let _guard = tch::no_grad_guard();
    serve_batches(rx, watch, |model, ops| match models.get(model) {
        Some(model) => run_batch(model, ops, max_batch, watch),
        None => Err(DeviceError::UnknownModel(format!("#{model}"))),
    });
}

/// The device thread's loop around `run` (a batch's model index and ops → one answer per op, or one error for
/// all): answers every op, turns a panic into [`DeviceError::Panicked`], and stamps `watch` so that a batch that
/// never returns shows as a hung device (`run` stamps each forward pass it starts; this stamps the batch's start
/// and marks the device idle after it).
pub(crate) fn serve_batches(
    mut rx: mpsc::Receiver<Batch>,
    watch: &DeviceWatch,
    mut run: impl FnMut(usize, &[DeviceOp]) -> Result<Vec<OpResult>, DeviceError>,
) {
    while let Some(batch) = rx.blocking_recv() {
        let ops: Vec<DeviceOp> = batch.items.iter().map(|i| i.op.clone()).collect();
        watch.pass_started();
        let results = match catch_unwind(AssertUnwindSafe(|| run(batch.model, &ops))) {
            Ok(Ok(results)) => results,
            Ok(Err(e)) => vec![Err(e); ops.len()],
            Err(p) => {
                let e = DeviceError::Panicked(panic_message(&p));
                tracing::error!(error = %e, "device batch panicked");
                vec![Err(e); ops.len()]
            }
        };
        watch.idle();
        for (item, result) in batch.items.into_iter().zip(results) {
            // The job may have given up waiting (shutdown): nothing to do then.
            let _ = item.reply.send(result);
        }
    }
}

/// Runs a batch; a batch-wide failure (torch error) is the outer `Err`, a per-op one (bad attribute) an inner one.
fn run_batch(
    model: &LoadedModel,
    ops: &[DeviceOp],
    max_batch: usize,
    watch: &DeviceWatch,
) -> Result<Vec<OpResult>, DeviceError> {
    let glow = &model.glow;
    // 1. One encode pass over every input image of the batch.
    let (z_all, bpd_all) = encode_chunked(glow, &input_images(ops), max_batch, watch)?;
    // 2. Per op: latent arithmetic; edit decodes are collected into one decode pass.
    let mut results: Vec<Option<OpResult>> = (0..ops.len()).map(|_| None).collect();
    let mut edit_z: Vec<Vec<Tensor>> = Vec::new();
    let mut edit_ops: Vec<usize> = Vec::new();
    let mut next = 0usize;
    let mut take = |n: usize| {
        let start = next;
        next += n;
        start
    };
    for (i, op) in ops.iter().enumerate() {
        match op {
            DeviceOp::Encode { .. } => {
                let r = take(1);
                results[i] = Some(Ok(DeviceOutput {
                    images: vec![],
                    latents: Some(crate::model::latents_file::latent_data(&select(&z_all, r))),
                    bits_per_dim: vec![bpd_all[r]],
                }));
            }
            DeviceOp::Edit { edits, .. } => {
                let r = take(1);
                match resolve(model, edits) {
                    Ok(dirs) => {
                        let pairs: Vec<(&Vec<Tensor>, f64)> = dirs.iter().map(|(d, s)| (*d, *s)).collect();
                        edit_z.push(directions::shift(&select(&z_all, r), &pairs));
                        edit_ops.push(i);
                        results[i] = Some(Ok(DeviceOutput { bits_per_dim: vec![bpd_all[r]], ..Default::default() }));
                    }
                    Err(e) => results[i] = Some(Err(e)),
                }
            }
            DeviceOp::Augment { variants, keep_levels, temperatures, seed, .. } => {
                let r = take(1);
                results[i] = Some(
                    augment(model, &select(&z_all, r), variants, *keep_levels, temperatures, *seed, max_batch, watch)
                        .map(|images| DeviceOutput { images, latents: None, bits_per_dim: vec![bpd_all[r]] }),
                );
            }
            DeviceOp::Interpolate { frames, .. } => {
                let r = take(2);
                let (za, zb) = (select(&z_all, r), select(&z_all, r + 1));
                let frames = (*frames).max(2);
                let zs: Vec<Vec<Tensor>> =
                    (0..frames).map(|k| directions::interpolate(&za, &zb, k as f64 / (frames - 1) as f64)).collect();
                let images = decode_chunked(glow, &zs, max_batch, watch)?.into_iter().collect::<Result<Vec<_>, _>>();
                results[i] = Some(images.map(|images| DeviceOutput {
                    images,
                    latents: None,
                    bits_per_dim: vec![bpd_all[r], bpd_all[r + 1]],
                }));
            }
            DeviceOp::Sample { n, temperatures, seed } => {
                let none: Vec<Option<Tensor>> = (0..model.info.levels).map(|_| None).collect();
                results[i] = Some(
                    check_temperatures(model, temperatures)
                        .and_then(|()| decode_seeded_chunked(glow, &none, *n, temperatures, *seed, max_batch, watch))
                        .map(|(images, _finite)| DeviceOutput { images, ..Default::default() }),
                );
            }
        }
    }
    // 3. The edit decodes, together.
    decode_edits(glow, ops, &edit_z, &edit_ops, &mut results, max_batch, watch)?;
    Ok(results.into_iter().map(|r| r.expect("every op answered")).collect())
}

/// Every input image of the batch, in op order (an interpolation's two images one after the other).
fn input_images(ops: &[DeviceOp]) -> Vec<&Pixels> {
    let mut inputs: Vec<&Pixels> = Vec::new();
    for op in ops {
        match op {
            DeviceOp::Encode { image } | DeviceOp::Edit { image, .. } | DeviceOp::Augment { image, .. } => {
                inputs.push(image)
            }
            DeviceOp::Interpolate { a, b, .. } => {
                inputs.push(a);
                inputs.push(b);
            }
            DeviceOp::Sample { .. } => {}
        }
    }
    inputs
}

/// Decodes the shifted latents of the batch's edit ops in one pass and fills in their answers (`edit_ops[k]` is
/// the op index of `edit_z[k]`).
fn decode_edits(
    glow: &Glow,
    ops: &[DeviceOp],
    edit_z: &[Vec<Tensor>],
    edit_ops: &[usize],
    results: &mut [Option<OpResult>],
    max_batch: usize,
    watch: &DeviceWatch,
) -> Result<(), DeviceError> {
    if edit_z.is_empty() {
        return Ok(());
    }
    let images = decode_chunked(glow, edit_z, max_batch, watch)?;
    for ((i, image), z) in edit_ops.iter().zip(images).zip(edit_z) {
        let image = match image {
            Ok(image) => image,
            Err(e) => {
                results[*i] = Some(Err(e));
                continue;
            }
        };
        if let Some(Ok(out)) = &mut results[*i] {
            out.images = vec![image];
            if matches!(&ops[*i], DeviceOp::Edit { latents: true, .. }) {
                out.latents = Some(crate::model::latents_file::latent_data(z));
            }
        }
    }
    Ok(())
}

/// Row `r` of every level.
fn select(z: &[Tensor], r: usize) -> Vec<Tensor> {
    z.iter().map(|t| t.narrow(0, r as i64, 1)).collect()
}

/// Encodes in chunks of `max_batch`. A chunk of one image is padded to two: measured on this project's CPU build
/// (libtorch 2.13, oneDNN), an image's latents are bitwise the same in every batch of two or more and at every
/// position, but a batch of one takes another kernel path and differs in the last bits. Padding makes every
/// output independent of what else happened to share its batch, so a redone job writes identical bytes.
fn encode_chunked(
    glow: &Glow,
    inputs: &[&Pixels],
    max_batch: usize,
    watch: &DeviceWatch,
) -> Result<(Vec<Tensor>, Vec<f64>), DeviceError> {
    if inputs.is_empty() {
        return Ok((vec![], vec![]));
    }
    let mut levels: Vec<Vec<Tensor>> = (0..glow.config.levels).map(|_| Vec::new()).collect();
    let mut bpd = Vec::with_capacity(inputs.len());
    for chunk in inputs.chunks(max_batch.max(1)) {
        let mut owned: Vec<Pixels> = chunk.iter().map(|p| (*p).clone()).collect();
        let padded = owned.len() == 1;
        if padded {
            owned.push(owned[0].clone());
        }
        watch.pass_started();
        let latents = glow.encode(&pixels_to_tensor(&owned))?;
        let keep = chunk.len() as i64;
        bpd.extend(latents.bits_per_dim(&glow.config).into_iter().take(chunk.len()));
        for (l, z) in latents.z.into_iter().enumerate() {
            levels[l].push(if padded { z.narrow(0, 0, keep) } else { z });
        }
    }
    let z = levels.iter().map(|parts| Tensor::cat(parts, 0)).collect();
    Ok((z, bpd))
}

/// Decodes a list of one-image latents in chunks of `max_batch`; an image that came out non-finite is an error of
/// its own op only, not of the batch.
fn decode_chunked(
    glow: &Glow,
    zs: &[Vec<Tensor>],
    max_batch: usize,
    watch: &DeviceWatch,
) -> Result<Vec<Result<Pixels, DeviceError>>, DeviceError> {
    let mut out = Vec::with_capacity(zs.len());
    for chunk in zs.chunks(max_batch.max(1)) {
        // A lone latent is decoded twice over, for the reason `encode_chunked` pads.
        let rows: Vec<&Vec<Tensor>> =
            if chunk.len() == 1 { vec![&chunk[0], &chunk[0]] } else { chunk.iter().collect() };
        let levels: Vec<Tensor> = (0..glow.config.levels as usize)
            .map(|l| Tensor::cat(&rows.iter().map(|z| z[l].shallow_clone()).collect::<Vec<_>>(), 0))
            .collect();
        watch.pass_started();
        let (pixels, finite) = glow.decode_checked(&levels)?;
        out.extend(tensor_to_pixels(&pixels).into_iter().zip(finite).take(chunk.len()).map(|(p, ok)| {
            ok.then_some(p).ok_or_else(|| {
                DeviceError::NonFinite(
                    "decoding gave non-finite pixels: the edited latent is too far from the data for this model \
                     (use smaller strengths)"
                        .into(),
                )
            })
        }));
    }
    Ok(out)
}

/// Decodes `n` rows (the given levels' rows, the others drawn from `seed`) in passes of at most `max_batch`, with
/// the noise of all `n` rows drawn ahead in one stream ([`Glow::prior_noise`]): the images are those of one pass
/// over all the rows, whatever `max_batch` is, and no pass is larger than the warm-up sized (an op of 256 samples
/// or 64 augment variants would otherwise run in one pass of its own size, and a device that cannot hold it fails
/// it again on every retry). A pass of one row is decoded twice over, for the reason `encode_chunked` pads.
/// Returns the images and which came out finite.
fn decode_seeded_chunked(
    glow: &Glow,
    given: &[Option<Tensor>],
    n: usize,
    temperatures: &[f64],
    seed: u64,
    max_batch: usize,
    watch: &DeviceWatch,
) -> Result<(Vec<Pixels>, Vec<bool>), DeviceError> {
    let mask: Vec<bool> = given.iter().map(Option::is_some).collect();
    let noise = glow.prior_noise(&mask, n as i64, seed);
    let (mut images, mut finite) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for (start, len) in passes(n, max_batch) {
        let rows = |t: &Tensor| {
            let part = t.narrow(0, start as i64, len as i64);
            if len == 1 {
                Tensor::cat(&[&part, &part], 0)
            } else {
                part
            }
        };
        let z: Vec<Option<Tensor>> = given.iter().map(|g| g.as_ref().map(rows)).collect();
        let eps: Vec<Option<Tensor>> = noise.iter().map(|e| e.as_ref().map(rows)).collect();
        watch.pass_started();
        let (pixels, ok) = glow.decode_noised_checked(&z, &eps, len.max(2) as i64, temperatures)?;
        images.extend(tensor_to_pixels(&pixels).into_iter().take(len));
        finite.extend(ok.into_iter().take(len));
    }
    Ok((images, finite))
}

/// The passes over `n` rows: (first row, rows), each at most `max_batch` rows, in order, covering all of them.
fn passes(n: usize, max_batch: usize) -> impl Iterator<Item = (usize, usize)> {
    let step = max_batch.max(1);
    (0..n).step_by(step).map(move |start| (start, step.min(n - start)))
}

fn resolve<'a>(model: &'a LoadedModel, edits: &[(String, f64)]) -> Result<Vec<(&'a Vec<Tensor>, f64)>, DeviceError> {
    if edits.is_empty() {
        return Ok(vec![]);
    }
    let dirs = model
        .directions
        .as_ref()
        .ok_or_else(|| DeviceError::Input(format!("model {} has no attribute directions", model.info.name)))?;
    edits.iter().map(|(a, s)| Ok((dirs.get(a).map_err(DeviceError::from)?, *s))).collect()
}

fn check_temperatures(model: &LoadedModel, t: &[f64]) -> Result<(), DeviceError> {
    if t.len() != model.info.levels {
        return Err(DeviceError::Input(format!(
            "{} temperatures for a model of {} levels",
            t.len(),
            model.info.levels
        )));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)] // the op's own fields, plus the pass size and the watch every pass stamps
fn augment(
    model: &LoadedModel,
    z: &[Tensor],
    variants: &[Vec<(String, f64)>],
    keep_levels: usize,
    temperatures: &[f64],
    seed: u64,
    max_batch: usize,
    watch: &DeviceWatch,
) -> Result<Vec<Pixels>, DeviceError> {
    let levels = model.info.levels;
    if keep_levels == 0 || keep_levels > levels {
        return Err(DeviceError::Input(format!("keep_levels {keep_levels} is outside 1..={levels} for this model")));
    }
    check_temperatures(model, temperatures)?;
    if variants.is_empty() {
        return Ok(vec![]);
    }
    // Every variant's latent with its attribute mix; then the kept (coarsest) levels stacked over the variants.
    let mut shifted: Vec<Vec<Tensor>> = Vec::with_capacity(variants.len());
    for mix in variants {
        let dirs = resolve(model, mix)?;
        let pairs: Vec<(&Vec<Tensor>, f64)> = dirs.iter().map(|(d, s)| (*d, *s)).collect();
        shifted.push(directions::shift(z, &pairs));
    }
    let given: Vec<Option<Tensor>> = (0..levels)
        .map(|l| {
            (l >= levels - keep_levels)
                .then(|| Tensor::cat(&shifted.iter().map(|v| v[l].shallow_clone()).collect::<Vec<_>>(), 0))
        })
        .collect();
    let (mut images, finite) = decode_seeded_chunked(&model.glow, &given, variants.len(), temperatures, seed, max_batch, watch)?;
    // A variant whose redrawn fine levels, added to its shifted coarse ones, overflow the inverse flow: redraw
    // that variant's noise from seeds derived from the job's (deterministic, so a redone job writes the same
    // bytes), a few times, before giving the job up as non-finite.
    for (v, ok) in finite.iter().enumerate() {
        if *ok {
            continue;
        }
        let one: Vec<Option<Tensor>> = given.iter().map(|g| g.as_ref().map(|t| t.narrow(0, v as i64, 1))).collect();
        let mut redrawn = None;
        for attempt in 1..=AUGMENT_REDRAWS {
            watch.pass_started();
            let (p, f) = model.glow.decode_partial_checked(&one, temperatures, redraw_seed(seed, v, attempt))?;
            if f[0] {
                redrawn = tensor_to_pixels(&p).pop();
                break;
            }
        }
        images[v] = redrawn.ok_or_else(|| {
            DeviceError::NonFinite(format!(
                "variant {v} decoded to non-finite pixels ({AUGMENT_REDRAWS} redraws too): its attribute mix is too \
                 far from the data for this model (narrow the strength ranges)"
            ))
        })?;
    }
    Ok(images)
}

/// Redraws of an augment variant's noise when it decodes to non-finite pixels.
const AUGMENT_REDRAWS: u64 = 4;

fn redraw_seed(seed: u64, variant: usize, attempt: u64) -> u64 {
    seed.wrapping_add(0x9E37_79B9_7F4A_7C15u64.wrapping_mul(attempt)).rotate_left(variant as u32 + 1)
}


/// The strengths of each augment variant: for variant i, for each range in order, a uniform draw from
/// `[min, max]` out of a ChaCha stream seeded by the job's seed. Part of the output contract: the same seed gives
/// the same mixes.
pub fn augment_mixes(ranges: &[(String, f64, f64)], variants: usize, seed: u64) -> Vec<Vec<(String, f64)>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..variants)
        .map(|_| {
            ranges
                .iter()
                .map(|(a, lo, hi)| {
                    let u: f64 = rng.gen();
                    (a.clone(), lo + (hi - lo) * u)
                })
                .collect()
        })
        .collect()
}

/// The noise seed of an augment job's redrawn levels, derived from its seed so the strength draws and the noise
/// come from different streams.
pub fn augment_noise_seed(seed: u64) -> u64 {
    seed ^ 0x5DEE_CE66_D1CE_4E5B
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::GlowConfig;

    fn watch() -> DeviceWatch {
        DeviceWatch::new("cpu", std::time::Duration::from_secs(60))
    }

    fn tiny() -> Glow {
        let mut config = GlowConfig::preset("tiny").unwrap();
        config.set("steps=2").unwrap();
        let (c, size) = (config.channels, config.image_size);
        let mut glow = Glow::new(config, Device::Cpu, 3).unwrap();
        tch::manual_seed(4);
        glow.initialize_actnorm(&Tensor::randint(256, [16, c, size, size], (tch::Kind::Uint8, Device::Cpu))).unwrap();
        glow.prepare_inference();
        glow
    }

    #[test]
    fn passes_cover_every_row_once_and_none_is_over_max_batch() {
        for (n, max_batch) in [(256, 16), (64, 16), (7, 2), (7, 3), (5, 1), (4, 4), (3, 16), (1, 16), (0, 4)] {
            let p: Vec<(usize, usize)> = passes(n, max_batch).collect();
            assert!(p.iter().all(|&(_, len)| len >= 1 && len <= max_batch), "{n} by {max_batch}: {p:?}");
            let rows: Vec<usize> = p.iter().flat_map(|&(s, len)| s..s + len).collect();
            assert_eq!(rows, (0..n).collect::<Vec<_>>(), "{n} by {max_batch}");
        }
        assert_eq!(passes(256, 16).count(), 16);
    }

    /// A sample (no level given) and a partial decode (the coarsest level given, as augment does) split into passes
    /// give the bytes of one pass over all rows: the noise of every row is drawn ahead in one stream.
    #[test]
    fn a_seeded_decode_in_passes_gives_the_bytes_of_one_pass() {
        let glow = tiny();
        let levels = glow.config.levels as usize;
        let temps = vec![0.7; levels];
        let none: Vec<Option<Tensor>> = (0..levels).map(|_| None).collect();
        for (n, max_batch) in [(7, 2), (7, 3), (5, 1), (4, 4)] {
            let (split, _) = decode_seeded_chunked(&glow, &none, n, &temps, 9, max_batch, &watch()).unwrap();
            let whole = tensor_to_pixels(&glow.sample(n as i64, &temps, 9).unwrap());
            assert!(split == whole, "sample of {n} in passes of {max_batch}");
        }
        let shapes = glow.config.latent_shapes();
        let (c, h, w) = shapes[levels - 1];
        tch::manual_seed(8);
        let top = Tensor::randn([7, c, h, w], (tch::Kind::Float, Device::Cpu));
        let given: Vec<Option<Tensor>> = (0..levels).map(|l| (l == levels - 1).then(|| top.shallow_clone())).collect();
        let (whole, _) = glow.decode_partial_checked(&given, &temps, 21).unwrap();
        let (split, _) = decode_seeded_chunked(&glow, &given, 7, &temps, 21, 3, &watch()).unwrap();
        assert!(split == tensor_to_pixels(&whole), "a partial decode of 7 in passes of 3");
    }
}
