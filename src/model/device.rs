//! `--device cpu|cuda|cuda:N|auto`.
use super::error::{ModelError, Result};
use std::sync::OnceLock;
use tch::{Cuda, Device};

/// torch-sys asks the linker for libtorch_cuda, but no symbol of it is named, so the default `--as-needed` drops
/// it and libtorch never registers its CUDA backend: `Cuda::is_available()` would be false on every GPU machine.
/// Loading the library here, only when a GPU is asked for, fixes that and keeps CPU runs from mapping half a
/// gigabyte of CUDA code. It is found the way the linker found libtorch (the binary's rpath, `LD_LIBRARY_PATH`);
/// a CPU-only libtorch has no such file, which is reported, not fatal.
pub fn load_cuda_backend() -> std::result::Result<(), String> {
    static LOADED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
            // SAFETY: loading runs libtorch_cuda's static initialisers, which only register its CUDA hooks with
            // the libtorch already loaded; the handle is leaked because unloading torch libraries is unsupported.
            match unsafe { Library::open(Some("libtorch_cuda.so"), RTLD_NOW | RTLD_GLOBAL) } {
                Ok(lib) => {
                    std::mem::forget(lib);
                    Ok(())
                }
                Err(e) => Err(format!("libtorch_cuda.so could not be loaded ({e})")),
            }
        })
        .clone()
}

pub fn parse_device(spec: &str) -> Result<Device> {
    let spec = spec.trim().to_ascii_lowercase();
    let device = match spec.as_str() {
        "cpu" => Device::Cpu,
        "auto" => match load_cuda_backend() {
            Ok(()) => Device::cuda_if_available(),
            Err(why) => {
                tracing::debug!("--device auto: using the CPU: {why}");
                Device::Cpu
            }
        },
        "cuda" | "gpu" => Device::Cuda(0),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => Device::Cuda(i),
            _ => return Err(ModelError::Device(spec)),
        },
    };
    if let Device::Cuda(i) = device {
        load_cuda_backend().map_err(|why| ModelError::DeviceUnavailable(format!("cuda:{i}: {why}")))?;
        let count = Cuda::device_count();
        if i as i64 >= count {
            return Err(ModelError::DeviceUnavailable(format!("cuda:{i}: libtorch sees {count} CUDA device(s)")));
        }
    }
    Ok(device)
}

pub fn device_name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_devices_and_rejects_others() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert_eq!(parse_device("CPU").unwrap(), Device::Cpu);
        assert!(matches!(parse_device("tpu"), Err(ModelError::Device(_))));
        assert!(matches!(parse_device("cuda:x"), Err(ModelError::Device(_))));
        if !Cuda::is_available() {
            assert!(matches!(parse_device("cuda:0"), Err(ModelError::DeviceUnavailable(_))));
            assert_eq!(parse_device("auto").unwrap(), Device::Cpu);
        }
    }

    #[test]
    fn asking_for_a_gpu_loads_the_cuda_backend_that_libtorch_ships() {
        let maps = || std::fs::read_to_string("/proc/self/maps").unwrap();
        let cpu_lib = maps()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .find(|p| p.ends_with("/libtorch_cpu.so"))
            .map(std::path::PathBuf::from)
            .expect("libtorch_cpu.so is mapped");
        let ships_cuda = cpu_lib.with_file_name("libtorch_cuda.so").exists();
        let _ = parse_device("auto");
        if ships_cuda {
            assert!(load_cuda_backend().is_ok(), "{:?}", load_cuda_backend());
            assert!(maps().contains("/libtorch_cuda.so"), "libtorch_cuda.so is not mapped after --device auto");
        } else {
            assert!(load_cuda_backend().unwrap_err().contains("libtorch_cuda.so"));
        }
    }
}

/// Flush denormal floats to zero (FTZ and DAZ bits of MXCSR) before libtorch starts its worker threads, which
/// inherit the setting. Training drifts many values (Adam's second moments, small gradients) into the denormal
/// range, where every x86 float operation takes ~100x longer: a 32x32 face model slowed from 200 to 20 images/s
/// after a thousand steps without this. PyTorch offers the same as `torch.set_flush_denormal(True)`.
pub fn flush_denormals() {
    #[cfg(target_arch = "x86_64")]
    #[allow(deprecated)]
    // SAFETY: only sets two rounding-mode bits of this thread's MXCSR register.
    unsafe {
        use std::arch::x86_64::{_mm_getcsr, _mm_setcsr};
        _mm_setcsr(_mm_getcsr() | 0x8040);
    }
}
