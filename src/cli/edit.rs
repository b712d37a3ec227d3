//! The latent-editing commands: `directions`, `edit`, `interpolate`, `resample`, `sheet`.
use super::common::{load_images, load_model, per_level, setup, FitArgs, Runtime};
use crate::data::attributes;
use crate::codec::image::{self as imageio, Pixels};
use crate::model::batch::{pixels_to_tensor, tensor_to_pixels};
use crate::model::directions::{self, DirectionAccumulator, Directions, Provenance};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use tch::Tensor;

#[derive(Args)]
pub struct DirectionsArgs {
    #[arg(long)]
    model: PathBuf,
    /// Folder of labelled images (file names as in the labels file)
    #[arg(long)]
    images: PathBuf,
    /// list_attr_celeba.txt, or a CSV with a `file` column and one column per attribute (±1, 0/1, true/false)
    #[arg(long)]
    labels: PathBuf,
    /// Attributes to learn (default: all in the labels file), comma-separated
    #[arg(long, value_delimiter = ',')]
    attributes: Vec<String>,
    /// Refuse an attribute with fewer positive or negative examples than this
    #[arg(long, default_value_t = 20)]
    min_examples: usize,
    /// Use at most this many labelled images
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Model folder to write directions.safetensors into (default: --model)
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    fit: FitArgs,
    #[command(flatten)]
    runtime: Runtime,
}

pub fn directions(args: DirectionsArgs) -> Result<usize> {
    let device = setup(&args.runtime)?;
    let glow = load_model(&args.model, device, &args.runtime)?;
    let labels = attributes::read_labels(&args.labels)?;
    let wanted: Vec<String> = if args.attributes.is_empty() { labels.names.clone() } else { args.attributes.clone() };
    let columns: Vec<usize> = wanted
        .iter()
        .map(|a| {
            labels.index(a).with_context(|| {
                format!("attribute `{a}` is not in {} (it has: {})", args.labels.display(), labels.names.join(", "))
            })
        })
        .collect::<Result<_>>()?;
    // Count first, so an attribute that cannot be learnt is refused before any encoding.
    let limit = args.limit.unwrap_or(usize::MAX).min(labels.files.len());
    let mut refused = Vec::new();
    for (a, &col) in wanted.iter().zip(&columns) {
        let pos = labels.values[..limit].iter().filter(|v| v[col] == Some(true)).count();
        let neg = labels.values[..limit].iter().filter(|v| v[col] == Some(false)).count();
        if pos < args.min_examples || neg < args.min_examples {
            refused.push(format!("{a} ({pos} positive, {neg} negative; need {} of each)", args.min_examples));
        }
    }
    if !refused.is_empty() {
        bail!("too few examples for: {}", refused.join(", "));
    }
    let files: Vec<PathBuf> = labels.files[..limit].iter().map(|f| args.images.join(f)).collect();
    let mut accs: Vec<DirectionAccumulator> = wanted.iter().map(|_| DirectionAccumulator::new(&glow.config)).collect();
    let bar = indicatif::ProgressBar::new(files.len() as u64);
    let mut failed = 0;
    for (chunk_index, chunk) in files.chunks(args.batch.max(1)).enumerate() {
        let (loaded, bad) = load_images(chunk, &glow.config, args.fit.fit(), usize::MAX);
        failed += bad;
        bar.inc(chunk.len() as u64);
        if loaded.is_empty() {
            continue;
        }
        let pixels: Vec<Pixels> = loaded.iter().map(|(_, p)| p.clone()).collect();
        let latents = glow.encode(&pixels_to_tensor(&pixels))?;
        for (row, (path, _)) in loaded.iter().enumerate() {
            let file_index = chunk_index * args.batch.max(1) + chunk.iter().position(|p| p == path).expect("from chunk");
            for (acc, &col) in accs.iter_mut().zip(&columns) {
                if let Some(positive) = labels.values[file_index][col] {
                    acc.add(&latents.z, row as i64, positive);
                }
            }
        }
    }
    bar.finish_and_clear();
    let out = args.out.clone().unwrap_or(args.model.clone());
    if out != args.model {
        for f in ["config.json", "weights.safetensors"] {
            std::fs::create_dir_all(&out)?;
            std::fs::copy(args.model.join(f), out.join(f)).with_context(|| format!("copying {f}"))?;
        }
    }
    let fingerprint = directions::model_fingerprint(&out)?;
    let mut dirs = match Directions::load(&out, &glow.config) {
        Ok(Some(d)) => d,
        _ => Directions::empty(fingerprint),
    };
    let created = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    for (a, acc) in wanted.iter().zip(&accs) {
        let Some(d) = acc.direction() else {
            bail!("{a}: no usable positive or negative images");
        };
        let prov = Provenance {
            positives: acc.positives,
            negatives: acc.negatives,
            source: format!("{} + {}", args.labels.display(), args.images.display()),
            created: created.clone(),
            norm: directions::norm(&d),
        };
        eprintln!("{a}: {} positive, {} negative, norm {:.2}", prov.positives, prov.negatives, prov.norm);
        dirs.summary.attributes.insert(a.clone(), prov);
        dirs.vectors.insert(a.clone(), d);
    }
    dirs.save(&out)?;
    eprintln!("wrote {} directions to {}", wanted.len(), out.join(directions::DIRECTIONS_FILE).display());
    Ok(failed)
}

/// `Name=strength` pairs, checked against the model's directions and the strength bound before any work.
pub fn parse_edits<'a>(
    specs: &[String],
    dirs: Option<&'a Directions>,
    max_strength: f64,
) -> Result<Vec<(&'a Vec<Tensor>, f64)>> {
    let mut out = Vec::new();
    for spec in specs {
        let (name, value) = spec.split_once('=').with_context(|| format!("`{spec}` is not Attribute=strength"))?;
        let strength: f64 = value.trim().parse().with_context(|| format!("`{spec}`: `{value}` is not a number"))?;
        if !strength.is_finite() || strength.abs() > max_strength {
            bail!("`{spec}`: strength {strength} is outside ±{max_strength} (raise --max-strength to allow it)");
        }
        let dirs = dirs.context("this model has no directions: run `glowd directions` first")?;
        out.push((dirs.get(name.trim())?, strength));
    }
    Ok(out)
}

#[derive(Args)]
pub struct EditArgs {
    #[arg(long)]
    model: PathBuf,
    /// Attribute=strength, repeatable (e.g. --attr Smiling=+1.0 --attr Eyeglasses=0.5)
    #[arg(long = "attr", required = true)]
    attrs: Vec<String>,
    #[arg(required = true)]
    images: Vec<PathBuf>,
    #[arg(long)]
    out: PathBuf,
    /// Largest |strength| accepted
    #[arg(long, default_value_t = crate::job::DEFAULT_MAX_STRENGTH)]
    max_strength: f64,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    #[command(flatten)]
    fit: FitArgs,
    #[command(flatten)]
    runtime: Runtime,
}

pub fn edit(args: EditArgs) -> Result<usize> {
    let device = setup(&args.runtime)?;
    let glow = load_model(&args.model, device, &args.runtime)?;
    let dirs = Directions::load(&args.model, &glow.config)?;
    let edits = parse_edits(&args.attrs, dirs.as_ref(), args.max_strength)?;
    std::fs::create_dir_all(&args.out)?;
    let (loaded, mut failed) = load_images(&args.images, &glow.config, args.fit.fit(), usize::MAX);
    for chunk in loaded.chunks(args.batch.max(1)) {
        let pixels: Vec<Pixels> = chunk.iter().map(|(_, p)| p.clone()).collect();
        let latents = glow.encode(&pixels_to_tensor(&pixels))?;
        let (edited, finite) = glow.decode_checked(&directions::shift(&latents.z, &edits))?;
        for (((path, _), img), finite) in chunk.iter().zip(tensor_to_pixels(&edited)).zip(finite) {
            if !finite {
                eprintln!("{}: {}", path.display(), outside_the_model(&args.attrs.join(", ")));
                failed += 1;
                continue;
            }
            let (target, format) = edit_output(path, &args.out);
            if let Err(e) = save_as(&imageio::pixels_to_image(&img), &target, format) {
                eprintln!("{e}");
                failed += 1;
            }
        }
    }
    Ok(failed)
}

/// Where `glowd edit` writes the edit of `input`: under `out` with the input's file name, in the input's format
/// when this build can write it (png, jpg/jpeg, webp, gif), otherwise as `<stem>.png` with a note.
/// Why an output was not written: quantising a non-finite decode would give a black picture without a word.
fn outside_the_model(what: &str) -> String {
    format!("{what}: decoding gave non-finite pixels (outside what this model can draw for this face); not written")
}

pub fn edit_output(input: &Path, out: &Path) -> (PathBuf, image::ImageFormat) {
    let name = input.file_name().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("out.png"));
    match image::ImageFormat::from_path(&name) {
        Ok(format) if format.writing_enabled() => (out.join(name), format),
        _ => {
            let png = name.with_extension("png");
            eprintln!("note: {}: cannot write this format, writing {} instead", input.display(), png.display());
            (out.join(png), image::ImageFormat::Png)
        }
    }
}

/// Writes `img` in `format`; JPEG at quality 95 (edits of JPEG inputs stay JPEG, so they are lossy: only PNG and
/// WebP outputs of a strength-0 edit are the input bit for bit).
fn save_as(img: &image::DynamicImage, path: &Path, format: image::ImageFormat) -> Result<(), imageio::ImageError> {
    use image::ImageFormat;
    let write_err = |e: String| imageio::ImageError::Write { path: path.into(), message: e };
    match format {
        ImageFormat::Png => imageio::save_png(img, path),
        ImageFormat::Jpeg => {
            let file = std::fs::File::create(path).map_err(|e| write_err(e.to_string()))?;
            let mut writer = std::io::BufWriter::new(file);
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut writer, 95)
                .encode_image(img)
                .map_err(|e| write_err(e.to_string()))
        }
        ImageFormat::Gif => image::DynamicImage::ImageRgba8(img.to_rgba8())
            .save_with_format(path, format)
            .map_err(|e| write_err(e.to_string())),
        _ => img.save_with_format(path, format).map_err(|e| write_err(e.to_string())),
    }
}

/// What every picture-writing command shares.
#[derive(Args)]
pub struct PictureArgs {
    /// Enlarge the written picture N times (nearest neighbour)
    #[arg(long, default_value_t = 1)]
    scale: u32,
    #[command(flatten)]
    fit: FitArgs,
    #[command(flatten)]
    runtime: Runtime,
}

#[derive(Args)]
pub struct InterpolateArgs {
    #[arg(long)]
    model: PathBuf,
    a: PathBuf,
    b: PathBuf,
    /// Frames including both ends
    #[arg(long, default_value_t = 8)]
    frames: usize,
    /// The strip (PNG)
    #[arg(long)]
    out: PathBuf,
    /// Also write an animated GIF (forth and back)
    #[arg(long)]
    gif: Option<PathBuf>,
    #[command(flatten)]
    picture: PictureArgs,
}

pub fn interpolate(args: InterpolateArgs) -> Result<usize> {
    let device = setup(&args.picture.runtime)?;
    let glow = load_model(&args.model, device, &args.picture.runtime)?;
    if args.frames < 2 {
        bail!("--frames must be at least 2");
    }
    let (loaded, failed) = load_images(&[args.a.clone(), args.b.clone()], &glow.config, args.picture.fit.fit(), 2);
    if failed > 0 || loaded.len() != 2 {
        bail!("both images must be readable");
    }
    let pixels: Vec<Pixels> = loaded.iter().map(|(_, p)| p.clone()).collect();
    let latents = glow.encode(&pixels_to_tensor(&pixels))?;
    let (za, zb) = (latents.select(0).z, latents.select(1).z);
    let mut frames: Vec<Pixels> = Vec::with_capacity(args.frames);
    for k in 0..args.frames {
        let t = k as f64 / (args.frames - 1) as f64;
        let (p, finite) = glow.decode_checked(&directions::interpolate(&za, &zb, t))?;
        if !finite[0] {
            bail!("{} → {}: {}", args.a.display(), args.b.display(), outside_the_model(&format!("frame {k} (t = {t:.3})")));
        }
        frames.push(tensor_to_pixels(&p).remove(0));
    }
    imageio::save_png_scaled(&imageio::grid(&frames, frames.len()), &args.out, args.picture.scale)?;
    if let Some(gif) = &args.gif {
        write_gif(&frames, gif)?;
    }
    Ok(0)
}

fn write_gif(frames: &[Pixels], path: &Path) -> Result<()> {
    let bytes = crate::codec::gif::gif_bytes(frames)?;
    std::fs::write(path, bytes).with_context(|| format!("{}", path.display()))
}

#[derive(Args)]
pub struct ResampleArgs {
    #[arg(long)]
    model: PathBuf,
    image: PathBuf,
    /// Coarsest levels kept from the image; the finer ones are redrawn
    #[arg(long, default_value_t = 1)]
    keep_levels: usize,
    #[arg(long, default_values_t = [crate::job::DEFAULT_TEMPERATURE], value_delimiter = ',')]
    temperature: Vec<f64>,
    /// Variations drawn
    #[arg(short = 'n', long, default_value_t = 8)]
    n: i64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Grid: the input first, then the variations
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    picture: PictureArgs,
}

pub fn resample(args: ResampleArgs) -> Result<usize> {
    let device = setup(&args.picture.runtime)?;
    let glow = load_model(&args.model, device, &args.picture.runtime)?;
    let levels = glow.config.levels as usize;
    if args.keep_levels == 0 || args.keep_levels > levels {
        bail!("--keep-levels must be in 1..={levels}");
    }
    let temps = per_level(&args.temperature, levels)?;
    let (loaded, failed) = load_images(std::slice::from_ref(&args.image), &glow.config, args.picture.fit.fit(), 1);
    if failed > 0 || loaded.is_empty() {
        bail!("{}: not usable", args.image.display());
    }
    let input = pixels_to_tensor(&[loaded[0].1.clone()]);
    let latents = glow.encode(&input)?;
    let given: Vec<Option<Tensor>> = latents
        .z
        .iter()
        .enumerate()
        .map(|(i, z)| (i >= levels - args.keep_levels).then(|| z.repeat([args.n, 1, 1, 1])))
        .collect();
    let (out, finite) = glow.decode_partial_checked(&given, &temps, args.seed)?;
    let mut tiles = vec![loaded[0].1.clone()];
    let mut failed = 0;
    for (k, (tile, finite)) in tensor_to_pixels(&out).into_iter().zip(finite).enumerate() {
        if finite {
            tiles.push(tile);
        } else {
            eprintln!("{}: {}", args.image.display(), outside_the_model(&format!("resample {k}")));
            failed += 1;
        }
    }
    imageio::save_png_scaled(&imageio::grid(&tiles, tiles.len().min(9)), &args.out, args.picture.scale)?;
    Ok(failed)
}

#[derive(Args)]
pub struct SheetArgs {
    #[arg(long)]
    model: PathBuf,
    /// One attribute per sheet
    #[arg(long)]
    attr: String,
    #[arg(long, default_value = "-2,-1,0,1,2", value_delimiter = ',', allow_hyphen_values = true)]
    strengths: Vec<f64>,
    #[arg(required = true)]
    images: Vec<PathBuf>,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = crate::job::DEFAULT_MAX_STRENGTH)]
    max_strength: f64,
    #[command(flatten)]
    picture: PictureArgs,
}

pub fn sheet(args: SheetArgs) -> Result<usize> {
    let device = setup(&args.picture.runtime)?;
    let glow = load_model(&args.model, device, &args.picture.runtime)?;
    let dirs = Directions::load(&args.model, &glow.config)?;
    let specs: Vec<String> = args.strengths.iter().map(|s| format!("{}={s}", args.attr)).collect();
    let edits = parse_edits(&specs, dirs.as_ref(), args.max_strength)?;
    let (loaded, failed) = load_images(&args.images, &glow.config, args.picture.fit.fit(), usize::MAX);
    if loaded.is_empty() {
        bail!("no usable images");
    }
    let pixels: Vec<Pixels> = loaded.iter().map(|(_, p)| p.clone()).collect();
    let latents = glow.encode(&pixels_to_tensor(&pixels))?;
    let mut columns: Vec<Vec<Pixels>> = Vec::with_capacity(edits.len());
    let mut row_ok = vec![true; pixels.len()];
    for (e, spec) in edits.iter().zip(&specs) {
        let (p, finite) = glow.decode_checked(&directions::shift(&latents.z, std::slice::from_ref(e)))?;
        for (row, finite) in finite.into_iter().enumerate() {
            if !finite {
                eprintln!("{}: {}", loaded[row].0.display(), outside_the_model(spec));
                row_ok[row] = false;
            }
        }
        columns.push(tensor_to_pixels(&p));
    }
    // A face with any non-finite tile leaves the sheet (its row would hold a black tile); the others still show.
    let rows: Vec<usize> = (0..pixels.len()).filter(|&r| row_ok[r]).collect();
    let dropped = row_ok.iter().filter(|ok| !**ok).count();
    if rows.is_empty() {
        eprintln!("{}: every face decoded non-finite at some strength: no sheet written", args.out.display());
        return Ok(failed + dropped);
    }
    let tiles: Vec<Pixels> = rows.iter().flat_map(|&row| columns.iter().map(move |col| col[row].clone())).collect();
    imageio::save_png_scaled(&imageio::grid(&tiles, edits.len()), &args.out, args.picture.scale)?;
    Ok(failed + dropped)
}
