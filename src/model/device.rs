//! `--device cpu|cuda|cuda:N|auto`.
use super::error::{ModelError, Result};
use tch::{Cuda, Device};

pub fn parse_device(spec: &str) -> Result<Device> {
    let spec = spec.trim().to_ascii_lowercase();
    let device = match spec.as_str() {
        "cpu" => Device::Cpu,
        "auto" => Device::cuda_if_available(),
        "cuda" | "gpu" => Device::Cuda(0),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => Device::Cuda(i),
            _ => return Err(ModelError::Device(spec)),
        },
    };
    if let Device::Cuda(i) = device {
        if i as i64 >= Cuda::device_count() {
            return Err(ModelError::DeviceUnavailable(format!("cuda:{i}")));
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
}
