//! What a job asks of the device, checked against the model before any input is fetched, and the encoding of the
//! device's answer into the job's output files.
use super::*;

/// A job checked against its model, waiting for its decoded inputs.
pub(super) struct Prepared {
    kind: PreparedKind,
}

enum PreparedKind {
    Encode,
    Edit { edits: Vec<(String, f64)>, latents: bool },
    Augment { variants: Vec<Vec<(String, f64)>>, keep_levels: usize, temperatures: Vec<f64>, seed: u64 },
    Interpolate { frames: usize },
    Sample { n: usize, temperatures: Vec<f64>, seed: u64 },
}

impl Prepared {
    pub(super) fn op(&self, mut images: Vec<Pixels>) -> DeviceOp {
        let mut next = || images.remove(0);
        match &self.kind {
            PreparedKind::Encode => DeviceOp::Encode { image: next() },
            PreparedKind::Edit { edits, latents } => {
                DeviceOp::Edit { image: next(), edits: edits.clone(), latents: *latents }
            }
            PreparedKind::Augment { variants, keep_levels, temperatures, seed } => DeviceOp::Augment {
                image: next(),
                variants: variants.clone(),
                keep_levels: *keep_levels,
                temperatures: temperatures.clone(),
                seed: crate::worker::augment_noise_seed(*seed),
            },
            PreparedKind::Interpolate { frames } => {
                let a = next();
                DeviceOp::Interpolate { a, b: next(), frames: *frames }
            }
            PreparedKind::Sample { n, temperatures, seed } => {
                DeviceOp::Sample { n: *n, temperatures: temperatures.clone(), seed: *seed }
            }
        }
    }
}

/// Checks what the schema cannot know (the model's attributes and levels) and works out the device op's numbers
/// (augment's strength mixes come from the job's seed here).
pub(super) fn prepare(job: &Job, info: &ModelInfo) -> Result<Prepared, StageError> {
    let invalid = |m: String| StageError::dead(ErrorKind::InvalidForModel, Stage::Parse, m);
    let check_attr = |a: &str| {
        if info.attributes.iter().any(|x| x == a) {
            Ok(())
        } else if info.attributes.is_empty() {
            Err(StageError::dead(
                ErrorKind::UnknownAttribute,
                Stage::Parse,
                format!(
                    "attribute {}: model {} {} has no attribute directions",
                    job::quote(a),
                    info.name,
                    info.version
                ),
            ))
        } else {
            Err(StageError::dead(
                ErrorKind::UnknownAttribute,
                Stage::Parse,
                format!(
                    "attribute {} is not one of model {}'s: {}",
                    job::quote(a),
                    info.name,
                    info.attributes.join(", ")
                ),
            ))
        }
    };
    let kind = match &job.spec {
        JobSpec::Encode(_) => PreparedKind::Encode,
        JobSpec::Edit(j) => {
            for e in &j.edits {
                check_attr(&e.attribute)?;
            }
            PreparedKind::Edit {
                edits: j.edits.iter().map(|e| (e.attribute.clone(), e.strength)).collect(),
                latents: j.write_latents,
            }
        }
        JobSpec::Augment(j) => {
            for r in &j.attributes {
                check_attr(&r.attribute)?;
            }
            let keep = j.keep_levels as usize;
            if keep == 0 || keep > info.levels {
                return Err(invalid(format!(
                    "keep_levels {keep} is outside 1..={} for model {}",
                    info.levels, info.name
                )));
            }
            let temperatures = j.temperature.per_level(info.levels).map_err(invalid)?;
            let seed = job.seed().expect("augment jobs are seeded");
            let ranges: Vec<(String, f64, f64)> =
                j.attributes.iter().map(|r| (r.attribute.clone(), r.min, r.max)).collect();
            PreparedKind::Augment {
                variants: crate::worker::augment_mixes(&ranges, j.variants as usize, seed),
                keep_levels: keep,
                temperatures,
                seed,
            }
        }
        JobSpec::Interpolate(j) => PreparedKind::Interpolate { frames: j.frames as usize },
        JobSpec::Sample(j) => PreparedKind::Sample {
            n: j.n as usize,
            temperatures: j.temperature.per_level(info.levels).map_err(invalid)?,
            seed: job.seed().expect("sample jobs are seeded"),
        },
    };
    Ok(Prepared { kind })
}

/// The job's output files, in [`Job::output_names`] order.
pub(super) fn encode_outputs(
    job: &Job,
    out: &DeviceOutput,
    precision: crate::precision::Precision,
) -> Result<Vec<(Vec<u8>, MediaType)>, StageError> {
    let fail = |m: String| StageError::fatal(ErrorKind::Internal, Stage::Encode, m);
    let images = |format: job::ImageFormat| -> Result<Vec<(Vec<u8>, MediaType)>, StageError> {
        out.images
            .iter()
            .map(|p| output::image_bytes(p, format).map(|b| (b, format.media_type())).map_err(fail))
            .collect()
    };
    let latents = || -> Result<(Vec<u8>, MediaType), StageError> {
        let l = out.latents.as_ref().ok_or_else(|| fail("the device returned no latents".into()))?;
        let bpd = out.bits_per_dim.first().copied().unwrap_or(f64::NAN);
        crate::codec::latents::to_bytes(l, bpd, precision.as_str()).map(|b| (b, MediaType::OctetStream)).map_err(|e| fail(e.to_string()))
    };
    Ok(match &job.spec {
        JobSpec::Edit(j) => {
            let mut v = images(j.format)?;
            if j.write_latents {
                v.push(latents()?);
            }
            v
        }
        JobSpec::Encode(_) => vec![latents()?],
        JobSpec::Augment(j) => images(j.format)?,
        JobSpec::Sample(j) => images(j.format)?,
        JobSpec::Interpolate(j) => {
            let mut v = images(j.format)?;
            if j.animation {
                v.push((crate::codec::gif::gif_bytes(&out.images).map_err(|e| fail(e.to_string()))?, MediaType::Gif));
            }
            v
        }
    })
}
