//! The `glowd` command line. Each subcommand is a thin shell over the library; errors that concern one input
//! file are reported on one line and the other files still run (exit status 1 at the end).
mod common;
pub mod edit;
mod infer;
mod model;
mod picture;
pub mod pipeline;
mod studio;
pub mod tools;
mod train;


use anyhow::Result;
use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "glowd", version, about = "Glow flow model: encode, decode, sample and evaluate images exactly")]
struct Cli {
    /// Log lines as text or as JSON objects, one per line, with the job's id, topic, partition and offset as
    /// fields (what log collectors on Kubernetes parse). Levels come from GLOWD_LOG (e.g. `info,glowd=debug`).
    #[arg(long, global = true, env = "GLOWD_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Create and inspect model folders
    Model {
        #[command(subcommand)]
        command: model::ModelCommand,
    },
    /// Encode images to latents (`<stem>.safetensors` in --out) and print a JSON line per image with bits/dim
    Encode(infer::EncodeArgs),
    /// Decode latent files to images (`<stem>.png` in --out)
    Decode(infer::DecodeArgs),
    /// Draw samples from the model into one grid image
    Sample(infer::SampleArgs),
    /// Bits per dimension of every image (one JSON line each) and their mean (the last line); `--split validation`
    /// scores exactly the images `glowd train` held out from the same data
    Eval(infer::EvalArgs),
    /// Learn attribute directions from labelled images into the model folder
    Directions(edit::DirectionsArgs),
    /// Edit images along attribute directions (each output keeps its input's name)
    Edit(edit::EditArgs),
    /// Blend two images in latent space: a strip of frames (and optionally a GIF)
    Interpolate(edit::InterpolateArgs),
    /// Keep an image's coarse levels and redraw the fine ones: variations of one image
    Resample(edit::ResampleArgs),
    /// Contact sheet: one row per image, one column per strength of one attribute
    Sheet(edit::SheetArgs),
    /// Train a model by maximum likelihood (see the README's Training section); a flag given twice takes its
    /// last value (so scripts can pass "$@" after their defaults), except repeatable ones like --set
    #[command(args_override_self = true)]
    Train(train::TrainArgs),
    /// Tile images into one picture (rows of --cols), e.g. originals above their reconstructions; --label names
    /// each row, --scale enlarges it
    Grid(picture::GridArgs),
    /// Import another implementation's checkpoint as a glowd model folder (rosinality/glow-pytorch state_dicts)
    Import(model::ImportArgs),
    /// Run job lines through the pipeline locally (embedded mode: no Kafka or S3), writing outputs, manifests,
    /// results.jsonl and dead-letters.jsonl
    Run(pipeline::RunArgs),
    /// The daemon: Kafka jobs topic -> batched device workers -> S3, results and DLQ topics, /metrics /healthz
    /// /readyz; SIGTERM drains and commits
    Serve(pipeline::ServeArgs),
    /// Check a pipeline file (keys, models, the [submit] job's model and attributes) before anything runs; exit 1
    /// naming each problem by key
    Validate(tools::ValidateArgs),
    /// Enqueue one job per image under an S3 prefix (the pipeline file's [submit] template); prints the run id
    Submit(tools::SubmitArgs),
    /// Done / failed / pending of a submitted run, from the results topic and the run record
    Status(tools::StatusArgs),
    /// A run's latents as Parquet shards plus dataset.json, under <output prefix>/datasets/<run>/
    Dataset(tools::DatasetArgs),
    /// Compare the pixels of image pairs (a1 b1 a2 b2 ...): prints the differences, exit 1 if any pair differs
    Compare(picture::CompareArgs),
    /// Encode/decode throughput on a preset with random weights; the CPU and its bf16 units, and this machine's
    /// convolution throughput at fp32 and bf16 (their ratio is the most bf16 can gain here)
    Bench(model::BenchArgs),
    /// A web page to try edits on faces (sliders per attribute), interpolate, sample, export the run's [submit]
    /// template and command, and watch runs (with --pipeline); `--bench N` prints its slider-to-picture latency
    Studio(studio::StudioArgs),
}

pub fn main() -> ExitCode {
    crate::model::device::flush_denormals();
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("GLOWD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        // Span fields (job id, topic, partition, offset) flattened into each line's object.
        LogFormat::Json => logs.json().flatten_event(true).with_current_span(true).with_span_list(false).init(),
        LogFormat::Text => logs.init(),
    }
    match run(cli) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(failed) => {
            eprintln!("glowd: {failed} input(s) failed");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("glowd: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs a command; returns how many inputs failed.
fn run(cli: Cli) -> Result<usize> {
    match cli.command {
        Command::Model { command } => model::model(command),
        Command::Encode(args) => infer::encode(args),
        Command::Decode(args) => infer::decode(args),
        Command::Sample(args) => infer::sample(args),
        Command::Eval(args) => infer::eval(args),
        Command::Directions(args) => edit::directions(args),
        Command::Edit(args) => edit::edit(args),
        Command::Interpolate(args) => edit::interpolate(args),
        Command::Resample(args) => edit::resample(args),
        Command::Sheet(args) => edit::sheet(args),
        Command::Train(args) => train::train(args),
        Command::Grid(args) => picture::grid(args),
        Command::Import(args) => model::import(args),
        Command::Run(args) => pipeline::run(args),
        Command::Serve(args) => pipeline::serve(args),
        Command::Validate(args) => tools::validate(args),
        Command::Submit(args) => tools::submit(args),
        Command::Status(args) => tools::status(args),
        Command::Dataset(args) => tools::dataset(args),
        Command::Compare(args) => picture::compare(args),
        Command::Bench(args) => model::bench(args),
        Command::Studio(args) => studio::studio(args),
    }
}
