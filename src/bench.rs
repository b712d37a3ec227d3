//! `glowd bench`: encode/decode images/s of a preset with random weights, the achieved GFLOP/s, and this
//! machine's own large-convolution throughput as the yardstick for those GFLOP/s.
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
    let kind = match precision {
        crate::model::Precision::Fp32 => Kind::Float,
        crate::model::Precision::Bf16 => Kind::BFloat16,
    };
    let peak = conv_peak_gflops(device, iters, kind);
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
    Ok(())
}
