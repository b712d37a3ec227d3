//! `glowd bench`: encode/decode images/s of a preset with random weights, the achieved GFLOP/s, and this
//! machine's own large-convolution throughput at both precisions as the yardstick for those GFLOP/s. It names
//! the CPU and its bf16 units too, because what bf16 can gain is the CPU's: several times fp32 with AMX-BF16,
//! about twice with AVX512-BF16 alone, nothing where bf16 is emulated.
use crate::model::{Glow, GlowConfig};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Median seconds of `iters` runs of `f` after one warm-up run.
fn time<F: FnMut()>(device: Device, iters: usize, mut f: F) -> f64 {
    f();
    sync(device);
    let mut times: Vec<f64> = (0..iters.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            sync(device);
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    times[times.len() / 2]
}

/// GFLOP/s of a large 3x3 convolution (256→256 channels on 32x32, batch 8): what this device does at its best on
/// the kind of work Glow is made of.
pub fn conv_peak_gflops(device: Device, iters: usize, kind: Kind) -> f64 {
    let _g = tch::no_grad_guard();
    // Channels-last on the CPU: the layout glowd's inference runs in, and the one oneDNN's AMX kernels take.
    let layout = crate::model::Layout::default_for(device);
    let x = layout.apply(&Tensor::randn([8, 256, 32, 32], (Kind::Float, device)).to_kind(kind));
    let w = layout.apply(&Tensor::randn([256, 256, 3, 3], (Kind::Float, device)).to_kind(kind));
    let secs = time(device, iters, || {
        let _ = x.conv2d(&w, None::<Tensor>, 1, 1, 1, 1);
    });
    let flops = 2.0 * 8.0 * 256.0 * 256.0 * 9.0 * 32.0 * 32.0;
    flops / secs / 1e9
}

pub fn run(
    config: &GlowConfig,
    device: Device,
    batch: i64,
    iters: usize,
    precision: crate::model::Precision,
) -> crate::model::error::Result<()> {
    let mut glow = Glow::new(config.clone(), device, 0)?;
    let s = config.image_size;
    let pixels = Tensor::randint(256, [batch, config.channels, s, s], (Kind::Uint8, Device::Cpu));
    glow.initialize_actnorm(&pixels)?;
    glow.prepare_inference();
    glow.set_precision(precision);
    let latents = glow.encode(&pixels)?;
    let enc = time(device, iters, || {
        let _ = glow.encode(&pixels).expect("encode");
    });
    let dec = time(device, iters, || {
        let _ = glow.decode(&latents.z).expect("decode");
    });
    let flops = 2.0 * config.macs_per_image() * batch as f64;
    let peak_fp32 = conv_peak_gflops(device, iters, Kind::Float);
    let peak_bf16 = conv_peak_gflops(device, iters, Kind::BFloat16);
    let peak = match precision {
        crate::model::Precision::Fp32 => peak_fp32,
        crate::model::Precision::Bf16 => peak_bf16,
    };
    if device == Device::Cpu {
        println!("cpu: {}", cpu_description(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default()));
    }
    println!(
        "model {}x{}x{} L={} K={} hidden={} {:?} lu={} batch {batch} ({} parameters) precision {precision}",
        s,
        s,
        config.channels,
        config.levels,
        config.steps,
        config.hidden,
        config.coupling,
        config.lu,
        glow.parameter_count()
    );
    println!("encode images/s: {:.2} ({:.1} GFLOP/s)", batch as f64 / enc, flops / enc / 1e9);
    println!("decode images/s: {:.2} ({:.1} GFLOP/s)", batch as f64 / dec, flops / dec / 1e9);
    println!(
        "conv peak GFLOP/s ({precision}): {peak:.1} (encode at {:.0}% of it, decode at {:.0}%)",
        100.0 * flops / enc / 1e9 / peak,
        100.0 * flops / dec / 1e9 / peak
    );
    println!(
        "conv peak GFLOP/s: fp32 {peak_fp32:.1}, bf16 {peak_bf16:.1} (bf16/fp32 = {:.2}: the most bf16 can gain here)",
        peak_bf16 / peak_fp32
    );
    Ok(())
}

/// The CPU's model name and which bf16 units it has, from `/proc/cpuinfo`'s text (its first processor).
pub fn cpu_description(cpuinfo: &str) -> String {
    let field = |name: &str| {
        cpuinfo
            .lines()
            .find(|l| l.split(':').next().map(str::trim) == Some(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let model = field("model name").unwrap_or_else(|| "unknown".into());
    let flags = field("flags").unwrap_or_default();
    let has = |f: &str| flags.split_whitespace().any(|x| x == f);
    let units = match (has("amx_bf16"), has("avx512_bf16")) {
        (true, _) => "AMX-BF16",
        (false, true) => "AVX512-BF16, no AMX",
        (false, false) => "none (bf16 is emulated)",
    };
    format!("{model}; bf16 units: {units}")
}

#[cfg(test)]
mod tests {
    use super::cpu_description;

    #[test]
    fn the_cpu_line_names_the_model_and_its_bf16_units() {
        let amd = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx512f avx512_bf16 sse\n";
        assert_eq!(cpu_description(amd), "AMD EPYC; bf16 units: AVX512-BF16, no AMX");
        let spr = "model name\t: Intel(R) Xeon(R) Platinum 8480C\nflags\t: avx512_bf16 amx_bf16 amx_tile\n";
        assert_eq!(cpu_description(spr), "Intel(R) Xeon(R) Platinum 8480C; bf16 units: AMX-BF16");
        // `amx_bf16x` is not `amx_bf16`: flags are matched whole.
        assert_eq!(cpu_description("flags: avx2 amx_bf16x\n"), "unknown; bf16 units: none (bf16 is emulated)");
    }
}
