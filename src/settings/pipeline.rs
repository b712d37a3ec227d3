//! The pipeline's knobs: every bound with its default and what happens when it is reached. The same structs are
//! the `[limits]`, `[images]`, `[batching]`, `[retry]` and `[output]` tables of a pipeline file
//! (`deny_unknown_fields`: a misspelt key is an error, not a silent default).
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Bounds on work in flight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Jobs taken and not finished. When reached, intake waits (the Kafka source pauses its partitions after a
    /// grace period and keeps polling).
    pub max_in_flight_jobs: usize,
    /// Bytes of fetched inputs held by jobs in flight, reserved before the fetch: a job reserves
    /// `images.max_input_bytes` per input (at most this whole budget) before it reads any, and gives back what its
    /// inputs did not take once they are read. When reached, fetches wait for earlier jobs to finish.
    pub max_in_flight_bytes: u64,
    /// Bytes of decoded images held by the decodes in flight, reserved from the images' headers before any pixel is
    /// decoded: each image costs twice its decoded size (the decoder's buffer, width × height × bytes per pixel,
    /// and the copy cropping makes), so a 100 kB flat 4096x4096 16-bit RGBA PNG costs 256 MiB. When reached,
    /// decodes wait; a job that needs more than the whole budget is dead-lettered (`over_decode_budget`).
    pub max_in_flight_decoded_bytes: u64,
    /// Concurrent input fetches. Further fetches wait.
    pub fetch_concurrency: usize,
    /// Concurrent output writes (objects, not jobs). Further writes wait.
    pub put_concurrency: usize,
    /// On SIGTERM or the end of the input, how long in-flight jobs may take to finish; the rest are abandoned
    /// unacknowledged (they are redelivered).
    pub drain_timeout_seconds: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_in_flight_jobs: 64,
            max_in_flight_bytes: 256 * 1024 * 1024,
            max_in_flight_decoded_bytes: 1024 * 1024 * 1024,
            fetch_concurrency: 16,
            put_concurrency: 32,
            drain_timeout_seconds: 25.0,
        }
    }
}

/// How untrusted input images are decoded and fitted to the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageSettings {
    /// Largest input object; a bigger one is dead-lettered (`input_too_large`) without being read whole.
    pub max_input_bytes: u64,
    /// Largest width × height; checked from the header before decoding (`over_pixel_limit`).
    pub max_pixels: u64,
    /// Largest width or height (strict `image::Limits`).
    pub max_side: u32,
    /// Most bytes the decoder may allocate (`image::Limits::max_alloc`).
    pub max_decode_bytes: u64,
    /// Accepted formats, recognised from the bytes: any of png, jpeg, webp, gif.
    pub formats: Vec<String>,
    /// Crop box `[left, top, right, bottom]` applied first (CelebA faces: `[10, 25, 80, 95]`); a box that does not
    /// fit the image is `wrong_size`.
    pub crop: Option<[u32; 4]>,
    /// Centre-crop to a square and resize (Lanczos) to the model's size; without it a wrong size is `wrong_size`.
    pub resize: bool,
}

impl Default for ImageSettings {
    fn default() -> Self {
        ImageSettings {
            max_input_bytes: 16 * 1024 * 1024,
            max_pixels: 16 * 1024 * 1024,
            max_side: 8192,
            max_decode_bytes: 256 * 1024 * 1024,
            formats: vec!["png".into(), "jpeg".into(), "webp".into()],
            crop: None,
            resize: true,
        }
    }
}

/// The device side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchSettings {
    /// Most images in one forward pass (and the warm-up size). The pull batcher takes queued jobs up to this many
    /// images; more wait for the next batch.
    pub max_batch: usize,
    /// Devices, one worker thread each: `cpu`, `cuda`, `cuda:N`, `auto`.
    pub devices: Vec<String>,
    /// Torch CPU threads (0: torch's default).
    pub threads: i32,
    /// `fp32`, or `bf16`: the coupling networks in bfloat16 (CPUs with AMX-BF16 or AVX512-BF16, GPUs), the
    /// invertible parts in float32/64.
    /// Recorded in every manifest, result record and latents file.
    pub precision: crate::precision::Precision,
    /// The device watchdog: a forward pass running longer than this many seconds is a hung device, and `/healthz`
    /// fails (so the orchestrator restarts the process; its jobs are redelivered). 0: sized from the warm-up, 20
    /// times its slowest pass and at least 60 s.
    pub max_pass_seconds: f64,
}

impl Default for BatchSettings {
    fn default() -> Self {
        BatchSettings {
            max_batch: 16,
            devices: vec!["cpu".into()],
            threads: 0,
            precision: Default::default(),
            max_pass_seconds: 0.0,
        }
    }
}

/// Transient failures (S3 5xx, timeouts, device errors, sink outages): exponential backoff with full jitter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySettings {
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// After this long retrying one stage of one job, the job is dead-lettered (`retries_exhausted`). For fetches
    /// and writes the clock only runs while the object store answers requests: an outage stalls the jobs (they
    /// wait for the store, and are not dead-lettered), a key that keeps failing while others succeed does not.
    pub max_elapsed_seconds: f64,
    /// A store that denies the daemon's requests (401/403 on every read, or every write, of a bucket: rotated or
    /// revoked credentials, a bucket policy, a disabled KMS key) is an outage of the daemon's own access: the jobs
    /// wait (nothing is dead-lettered for it), `/readyz` fails and `glowd_store_denied` is 1. After this many
    /// seconds of denials with nothing of that kind served, the daemon stops and exits non-zero (so a restart
    /// picks up new credentials, e.g. a Kubernetes Secret's); 0: it waits for as long as it takes.
    pub max_denied_seconds: f64,
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings { initial_backoff_ms: 100, max_backoff_ms: 10_000, max_elapsed_seconds: 600.0, max_denied_seconds: 0.0 }
    }
}

impl RetrySettings {
    /// The wait before attempt `attempt` (1-based: the wait after the first failure is `backoff(1)`).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let cap = self.initial_backoff_ms.saturating_mul(1u64 << attempt.min(20)).min(self.max_backoff_ms).max(1);
        let jittered = rand::Rng::gen_range(&mut rand::thread_rng(), cap / 2..=cap);
        Duration::from_millis(jittered)
    }

    pub fn budget(&self) -> Duration {
        Duration::from_secs_f64(self.max_elapsed_seconds.max(0.0))
    }

    /// How long the store may deny the daemon's requests before the daemon stops; `None`: no bound.
    pub fn denied_bound(&self) -> Option<Duration> {
        (self.max_denied_seconds > 0.0).then(|| Duration::from_secs_f64(self.max_denied_seconds))
    }
}

/// Where outputs go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputSettings {
    /// Bucket of the outputs (ignored by the embedded mode's output folder).
    pub bucket: String,
    /// Key prefix: a job's outputs go under `<prefix>/<job id>/`.
    pub prefix: String,
    /// Most bytes read back of an object already in a job's folder (its manifest, its claim, or an output an
    /// earlier attempt wrote). An output is read back only up to the size its claim records; a larger object, or a
    /// manifest or claim over this, is not this work's and the job is refused (`id_conflict`).
    pub max_readback_bytes: u64,
}

impl Default for OutputSettings {
    fn default() -> Self {
        OutputSettings { bucket: String::new(), prefix: String::new(), max_readback_bytes: 64 * 1024 * 1024 }
    }
}

/// The likelihood gate: bits/dim is the model's outlier score (an image unlike the training data costs more bits).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GateSettings {
    /// Jobs with an input image above this many bits/dim are gated; none when unset.
    pub max_bits_per_dim: Option<f64>,
    pub action: GateAction,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateAction {
    /// Write the outputs as usual; the result says `"flags": ["over_likelihood_gate"]`.
    #[default]
    Flag,
    /// Write nothing; the result has status `skipped` with the reason and the bits/dim.
    Skip,
}

impl GateSettings {
    /// Why these images are over the gate, if they are.
    pub fn over(&self, bits_per_dim: &[f64]) -> Option<String> {
        let max = self.max_bits_per_dim?;
        let worst = bits_per_dim.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (worst > max).then(|| format!("{worst:.4} bits/dim is over the likelihood gate (gate.max_bits_per_dim = {max})"))
    }
}

/// Everything the pipeline core needs besides its source, stores and reporter.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineSettings {
    pub limits: Limits,
    pub images: ImageSettings,
    pub batching: BatchSettings,
    pub retry: RetrySettings,
    pub output: OutputSettings,
    pub jobs: crate::job::JobLimits,
    pub gate: GateSettings,
}

impl PipelineSettings {
    /// Refuses settings that cannot work, naming the key.
    pub fn check(&self) -> Result<(), String> {
        let positive = |name: &str, v: u64| if v == 0 { Err(format!("{name} must be at least 1")) } else { Ok(()) };
        positive("limits.max_in_flight_jobs", self.limits.max_in_flight_jobs as u64)?;
        positive("limits.max_in_flight_bytes", self.limits.max_in_flight_bytes)?;
        positive("limits.max_in_flight_decoded_bytes", self.limits.max_in_flight_decoded_bytes)?;
        positive("limits.fetch_concurrency", self.limits.fetch_concurrency as u64)?;
        positive("limits.put_concurrency", self.limits.put_concurrency as u64)?;
        positive("images.max_input_bytes", self.images.max_input_bytes)?;
        positive("images.max_pixels", self.images.max_pixels)?;
        positive("images.max_side", self.images.max_side as u64)?;
        positive("batching.max_batch", self.batching.max_batch as u64)?;
        positive("output.max_readback_bytes", self.output.max_readback_bytes)?;
        if self.batching.devices.is_empty() {
            return Err("batching.devices must name at least one device".into());
        }
        for f in &self.images.formats {
            if !crate::codec::image::KNOWN_FORMATS.contains(&f.as_str()) {
                return Err(format!(
                    "images.formats: unknown format `{f}` (known: {})",
                    crate::codec::image::KNOWN_FORMATS.join(", ")
                ));
            }
        }
        if let Some([l, t, r, b]) = self.images.crop {
            if r <= l || b <= t {
                return Err(format!("images.crop: [{l}, {t}, {r}, {b}] is empty (right > left and bottom > top)"));
            }
        }
        let prefix = self.output.prefix.trim_end_matches('/');
        if !prefix.is_empty() {
            crate::job::check_key(prefix).map_err(|e| format!("output.prefix: {e}"))?;
        }
        self.jobs.check().map_err(|e| format!("jobs: {e}"))?;
        if !(self.retry.max_denied_seconds >= 0.0 && self.retry.max_denied_seconds.is_finite()) {
            return Err("retry.max_denied_seconds must be >= 0 (0: no bound)".into());
        }
        if !(self.batching.max_pass_seconds >= 0.0 && self.batching.max_pass_seconds.is_finite()) {
            return Err("batching.max_pass_seconds must be >= 0 (0: sized from the warm-up)".into());
        }
        if !(self.limits.drain_timeout_seconds >= 0.0) {
            return Err("limits.drain_timeout_seconds must be >= 0".into());
        }
        Ok(())
    }
}
