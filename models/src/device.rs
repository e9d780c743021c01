//! Choosing where the models run: `cpu` or `cuda[:N]`.

use candle_core::Device;

/// Errors from device selection.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The name is neither `cpu` nor `cuda[:N]`.
    #[error("unknown device `{0}`: use `cpu` or `cuda` (optionally `cuda:N` for GPU N)")]
    Unknown(String),
    /// CUDA was asked for but this binary was built without it.
    #[error("device `{0}` needs a build with the `cuda` feature (cargo build --features cuda); this binary is CPU-only")]
    NoCudaSupport(String),
    /// CUDA was asked for but could not be opened.
    #[error("cannot open CUDA device {ordinal}: {source} (is the NVIDIA driver loaded and the user in group video/render?)")]
    Cuda {
        /// GPU index.
        ordinal: usize,
        /// The underlying candle error.
        source: candle_core::Error,
    },
}

/// Parses `cpu`, `cuda` or `cuda:N` and opens that device.
pub fn open(name: &str) -> Result<Device, DeviceError> {
    let name = name.trim();
    if name.eq_ignore_ascii_case("cpu") {
        return Ok(Device::Cpu);
    }
    let ordinal = match name.to_ascii_lowercase().as_str() {
        "cuda" | "gpu" => 0,
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => n,
            _ => return Err(DeviceError::Unknown(name.to_string())),
        },
    };
    if !candle_core::utils::cuda_is_available() {
        return Err(DeviceError::NoCudaSupport(name.to_string()));
    }
    Device::new_cuda(ordinal).map_err(|source| DeviceError::Cuda { ordinal, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names() {
        assert!(open("cpu").unwrap().is_cpu());
        assert!(open(" CPU ").unwrap().is_cpu());
        assert!(matches!(open("tpu"), Err(DeviceError::Unknown(_))));
        assert!(matches!(open("cuda:x"), Err(DeviceError::Unknown(_))));
        if !candle_core::utils::cuda_is_available() {
            assert!(matches!(open("cuda:1"), Err(DeviceError::NoCudaSupport(_))));
        }
    }
}
