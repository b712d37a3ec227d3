//! `glowd studio`: the web page for trying edits and watching runs (the server is `crate::studio`), and
//! `glowd studio --bench N`, its slider-to-picture latency.
use super::common::Runtime;
use crate::settings::{GateSettings, ImageSettings, PipelineFile};
use crate::studio::{self, client, Options};
use crate::worker::discover_models;
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct StudioArgs {
    /// A model folder, or a folder of model folders (as `glowd run --model-dir`); default: the pipeline file's
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// Pipeline file: faces are fitted and bounded by its [images], sliders reach ± its jobs.max_strength, its
    /// likelihood gate is shown; with [s3] and [kafka], the page lists its allowed inputs, exports its [submit]
    /// command and shows the Runs tab
    #[arg(long)]
    pipeline: Option<PathBuf>,
    /// Address to serve on; anything but the loopback needs --token
    #[arg(long, default_value = "127.0.0.1:8787")]
    listen: String,
    /// Bearer token every API call must carry (open the page as http://host:port/#token=…)
    #[arg(long, env = "GLOWD_STUDIO_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A folder whose images the page may list and open (repeat for several); nothing outside it is served
    #[arg(long = "images")]
    images: Vec<PathBuf>,
    /// Crop box left,top,right,bottom applied before resizing (CelebA faces: 10,25,80,95); overrides the pipeline's
    #[arg(long, value_parser = parse_crop)]
    crop: Option<[u32; 4]>,
    /// Refuse pictures of another size instead of centre-cropping and resizing them
    #[arg(long)]
    no_resize: bool,
    /// Slider range ± this (default: the pipeline's jobs.max_strength, else 4)
    #[arg(long)]
    max_strength: Option<f64>,
    /// Show the "Submit run" button (needs --pipeline with [submit], [kafka] and [s3])
    #[arg(long)]
    allow_submit: bool,
    /// Instead of serving: move a slider N times through the HTTP API and print the p50/p95 latency
    #[arg(long, value_name = "N")]
    bench: Option<usize>,
    /// The face the benchmark edits (default: a sample of the model, seed 0, T = 0.7)
    #[arg(long)]
    bench_image: Option<PathBuf>,
    #[command(flatten)]
    runtime: Runtime,
}

fn parse_crop(s: &str) -> Result<[u32; 4], String> {
    let v: Vec<u32> =
        s.split(',').map(|x| x.trim().parse::<u32>().map_err(|e| format!("`{x}`: {e}"))).collect::<Result<_, _>>()?;
    v.try_into().map_err(|_| "expected four numbers: left,top,right,bottom".to_string())
}

/// The pipeline file with its services; when their `${NAME}` variables are not set, the file without them (the
/// Edit tab still follows its [images], [gate] and [jobs]).
fn load_pipeline(path: &PathBuf) -> Result<PipelineFile> {
    match PipelineFile::load(path) {
        Ok(f) => Ok(f),
        Err(full) => {
            let f = PipelineFile::load_embedded(path).map_err(|e| anyhow!("{e}"))?;
            eprintln!("glowd studio: {full}\nglowd studio: without [kafka] and [s3]: no Runs tab, S3 listing or Submit");
            Ok(f)
        }
    }
}

pub fn studio(args: StudioArgs) -> Result<usize> {
    let pipeline = match &args.pipeline {
        Some(p) => Some((p.clone(), load_pipeline(p)?)),
        None => None,
    };
    let models = match (&args.model_dir, &pipeline) {
        (Some(dir), _) => discover_models(dir).with_context(|| format!("--model-dir {}", dir.display()))?,
        (None, Some((_, f))) => f.models.clone(),
        (None, None) => bail!("give --model-dir (or --pipeline with models)"),
    };
    let mut images = pipeline.as_ref().map(|(_, f)| f.pipeline.images.clone()).unwrap_or_else(ImageSettings::default);
    if args.crop.is_some() {
        images.crop = args.crop;
    }
    if args.no_resize {
        images.resize = false;
    }
    let gate = pipeline.as_ref().map(|(_, f)| f.pipeline.gate.clone()).unwrap_or_else(GateSettings::default);
    let max_strength = args
        .max_strength
        .or(pipeline.as_ref().map(|(_, f)| f.pipeline.jobs.max_strength))
        .unwrap_or(crate::job::DEFAULT_MAX_STRENGTH);
    if !(max_strength > 0.0 && max_strength.is_finite()) {
        bail!("--max-strength must be a positive number");
    }
    let opts = Options {
        models,
        device: args.runtime.device.clone(),
        threads: args.runtime.threads,
        precision: args.runtime.precision,
        listen: if args.bench.is_some() { "127.0.0.1:0".into() } else { args.listen.clone() },
        token: args.token.clone().filter(|t| !t.is_empty()),
        images,
        max_strength,
        gate,
        roots: args.images.clone(),
        pipeline,
        allow_submit: args.allow_submit,
    };
    let rt = crate::pipeline::runtime()?;
    let running = rt.block_on(studio::start(opts)).map_err(|e| anyhow!(e))?;
    if let Some(moves) = args.bench {
        let result = bench(&rt, &running, moves, args.bench_image.as_ref(), args.token.as_deref(), args.runtime.threads);
        rt.block_on(running.stop());
        println!("{}", result?);
        return Ok(0);
    }
    let url = format!("http://{}/", running.addr);
    let models: Vec<String> = running.engine.models.iter().map(|m| format!("{}@{} ({}x{})", m.name, m.version, m.image_size, m.image_size)).collect();
    eprintln!("glowd studio: {} on {}, serving {url}{}", models.join(", "), running.engine.device, if args.token.is_some() { "#token=…" } else { "" });
    println!("{url}");
    rt.block_on(async {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = running.wait() => {}
        }
    });
    Ok(0)
}

/// Moves the first face attribute's slider `moves` times (back and forth over its range at the slider's step)
/// through the real HTTP API, as the page does, and reports the latency percentiles of the edited picture.
fn bench(
    rt: &tokio::runtime::Runtime,
    running: &studio::Studio,
    moves: usize,
    image: Option<&PathBuf>,
    token: Option<&str>,
    threads: i32,
) -> Result<String> {
    if moves == 0 {
        bail!("--bench needs at least one move");
    }
    let addr = running.addr;
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    let info = client::get(addr, "/api/info", &headers)?.json();
    let model = info["default_model"].as_u64().unwrap_or(0) as usize;
    let m = &info["models"][model];
    let attrs: Vec<String> = m["attributes"].as_array().into_iter().flatten().filter_map(|a| a.as_str().map(str::to_string)).collect();
    let attr = attrs.iter().find(|a| *a == "Smiling").or(attrs.first()).cloned().ok_or_else(|| anyhow!("the model has no directions"))?;
    let bytes = match image {
        Some(p) => std::fs::read(p).with_context(|| p.display().to_string())?,
        None => {
            let levels = m["levels"].as_u64().unwrap_or(1) as usize;
            let faces = rt.block_on(running.engine.sample(model, 1, vec![0.7; levels], 0)).map_err(|e| anyhow!(e))?;
            crate::studio::png(&faces[0])
        }
    };
    // The page's own origin, as a browser sends it with a POST.
    let origin = format!("http://{addr}");
    let mut upload_headers = headers.clone();
    upload_headers.push(("Origin", origin.as_str()));
    let face = client::request(addr, "POST", &format!("/api/faces?model={model}"), &upload_headers, &bytes)?;
    if face.status != 200 {
        bail!("upload refused: {}", face.text());
    }
    let face = face.json()["face"].as_str().unwrap_or_default().to_string();
    let max = info["max_strength"].as_f64().unwrap_or(2.0).min(2.0);
    let step = info["step"].as_f64().unwrap_or(0.05);
    let span = (max / step).round() as i64;
    // A drag: 0 → +max → −max → +max …, one step per move.
    let position = |k: i64| -> f64 {
        let period = 4 * span;
        let p = k.rem_euclid(period);
        let steps = if p <= span { p } else if p <= 3 * span { 2 * span - p } else { p - 4 * span };
        (steps as f64 * step * 100.0).round() / 100.0
    };
    let mut ms = Vec::with_capacity(moves);
    let mut refused = 0;
    for k in 0..(moves as i64 + 5) {
        let path = format!("/api/edit?model={model}&face={face}&edits={}", client::encode(&format!("{attr}:{}", position(k + 1))));
        let t0 = Instant::now();
        let r = client::get(addr, &path, &headers)?;
        let elapsed = t0.elapsed().as_secs_f64() * 1000.0;
        if r.status == 422 {
            refused += 1;
        } else if r.status != 200 {
            bail!("edit refused: {} {}", r.status, r.text());
        }
        // The first few warm the caches up and are not counted.
        if k >= 5 {
            ms.push(elapsed);
        }
    }
    ms.sort_by(f64::total_cmp);
    let pct = |p: f64| ms[((p / 100.0) * (ms.len() - 1) as f64).round() as usize];
    let summary = serde_json::json!({
        "moves": ms.len(),
        "attribute": attr,
        "model": format!("{}@{}", m["name"].as_str().unwrap_or(""), m["version"].as_str().unwrap_or("")),
        "image_size": m["image_size"],
        "device": info["device"],
        "precision": info["precision"],
        "threads": if threads > 0 { threads } else { tch::get_num_threads() },
        "p50_ms": (pct(50.0) * 10.0).round() / 10.0,
        "p95_ms": (pct(95.0) * 10.0).round() / 10.0,
        "max_ms": (ms[ms.len() - 1] * 10.0).round() / 10.0,
        "non_finite": refused,
    });
    eprintln!(
        "glowd studio --bench: {} slider moves of {attr} on {}: p50 {:.1} ms, p95 {:.1} ms (request to PNG, over HTTP)",
        ms.len(),
        summary["model"].as_str().unwrap_or(""),
        pct(50.0),
        pct(95.0)
    );
    Ok(summary.to_string())
}
