//! The pipeline commands: `glowd run` (embedded mode) and `glowd serve` (the daemon).
use crate::daemon::embedded::{run_embedded, EmbeddedOptions};
use crate::pipeline::PipelineSettings;
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct RunArgs {
    /// A model folder, or a folder of model folders (`<name>/` or `<name>/<version>/`; version from the folder,
    /// a VERSION file, or 1)
    #[arg(long)]
    model_dir: PathBuf,
    /// Job messages, one JSON object per line (the same JSON as on the jobs topic)
    #[arg(long)]
    jobs: PathBuf,
    /// Inputs: s3://bucket/key is read from <input-dir>/bucket/key
    #[arg(long)]
    input_dir: PathBuf,
    /// Outputs go to <output-dir>/<job id>/ (with the manifest), plus results.jsonl and dead-letters.jsonl
    #[arg(long)]
    output_dir: PathBuf,
    /// Result records (default <output-dir>/results.jsonl)
    #[arg(long)]
    results: Option<PathBuf>,
    /// Dead letters: one line per refused job with the reason (default <output-dir>/dead-letters.jsonl)
    #[arg(long)]
    dead_letters: Option<PathBuf>,
    /// Pipeline file: its [limits], [images], [batching], [retry], [output] and [jobs] tables are used
    #[arg(long)]
    config: Option<PathBuf>,
    /// Crop box left,top,right,bottom applied to every input before resizing (CelebA faces: 10,25,80,95)
    #[arg(long, value_parser = parse_crop)]
    crop: Option<[u32; 4]>,
    /// Refuse inputs of another size instead of centre-cropping and resizing them
    #[arg(long)]
    no_resize: bool,
    /// Most images in one forward pass
    #[arg(long)]
    max_batch: Option<usize>,
    /// Most jobs in flight
    #[arg(long)]
    max_in_flight: Option<usize>,
    /// Device(s) for the workers: cpu, cuda, cuda:N or auto; repeat for one worker per device
    #[arg(long = "device")]
    devices: Vec<String>,
    /// Torch CPU threads (0: torch's default)
    #[arg(long)]
    threads: Option<i32>,
    /// fp32, or bf16: coupling networks in bfloat16 (CPUs with AMX-BF16 or AVX512-BF16, GPUs), the flow's state in
    /// float64 (overrides the pipeline file's [batching] precision)
    #[arg(long)]
    precision: Option<crate::precision::Precision>,
}

fn parse_crop(s: &str) -> Result<[u32; 4], String> {
    let v: Vec<u32> =
        s.split(',').map(|x| x.trim().parse::<u32>().map_err(|e| format!("`{x}`: {e}"))).collect::<Result<_, _>>()?;
    v.try_into().map_err(|_| "expected four numbers: left,top,right,bottom".to_string())
}

pub fn run(args: RunArgs) -> Result<usize> {
    let mut settings = match &args.config {
        Some(path) => crate::settings::PipelineFile::load_embedded(path)?.pipeline,
        None => PipelineSettings::default(),
    };
    if let Some(c) = args.crop {
        settings.images.crop = Some(c);
    }
    if args.no_resize {
        settings.images.resize = false;
    }
    if let Some(b) = args.max_batch {
        settings.batching.max_batch = b;
    }
    if let Some(n) = args.max_in_flight {
        settings.limits.max_in_flight_jobs = n;
    }
    if !args.devices.is_empty() {
        settings.batching.devices = args.devices.clone();
    }
    if let Some(t) = args.threads {
        settings.batching.threads = t;
    }
    if let Some(p) = args.precision {
        settings.batching.precision = p;
    }
    let opts = EmbeddedOptions {
        model_dir: args.model_dir,
        jobs: args.jobs,
        input_dir: args.input_dir,
        output_dir: args.output_dir,
        results: args.results,
        dead_letters: args.dead_letters,
        settings,
    };
    let summary = match run_embedded(&opts) {
        Ok(s) => s,
        Err(e) => bail!("{e}"),
    };
    println!("{}", serde_json::to_string(&summary)?);
    eprintln!(
        "{} jobs: {} done, {} dead-lettered ({}), {} abandoned; results in {}",
        summary.jobs,
        summary.done,
        summary.dead_lettered,
        opts.dead_letters_path().display(),
        summary.abandoned,
        opts.results_path().display()
    );
    Ok((summary.dead_lettered + summary.abandoned) as usize)
}

#[derive(Args)]
pub struct ServeArgs {
    /// Pipeline file (TOML): [kafka], [s3], [[models]] or models_dir, [http], and the pipeline's bounds
    #[arg(long, visible_alias = "pipeline")]
    config: PathBuf,
}

pub fn serve(args: ServeArgs) -> Result<usize> {
    match crate::daemon::serve(&args.config) {
        Ok(summary) => {
            eprintln!("{}", serde_json::to_string(&summary)?);
            Ok(0)
        }
        Err(e) => bail!("{e}"),
    }
}
