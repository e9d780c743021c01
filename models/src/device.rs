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

/// Where to run, as named in the configuration and on the command line: `cpu`, `cuda`
/// (GPU 0; `gpu` is accepted too) or `cuda:N`. The one parser of device names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// The CPU.
    #[default]
    Cpu,
    /// CUDA GPU number N.
    Cuda(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, DeviceError> {
        let name = s.trim().to_ascii_lowercase();
        match name.as_str() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceSpec::Cuda(n)),
                _ => Err(DeviceError::Unknown(s.trim().to_string())),
            },
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// Opens the device.
    pub fn open(&self) -> Result<Device, DeviceError> {
        match *self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(ordinal) => {
                if !candle_core::utils::cuda_is_available() {
                    return Err(DeviceError::NoCudaSupport(self.to_string()));
                }
                Device::new_cuda(ordinal).map_err(|source| DeviceError::Cuda { ordinal, source })
            }
        }
    }
}

/// Memory a device can still allocate, and from where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreeMemory {
    /// Bytes free now.
    pub bytes: u64,
    /// The allocations come out of the system RAM: the CPU, or an integrated GPU such as a
    /// Jetson's, whose CUDA memory is the same RAM.
    pub system_ram: bool,
}

/// What `device` can still allocate (None when it cannot tell).
pub fn free_memory(device: &Device) -> Option<FreeMemory> {
    if device.is_cpu() || cuda_is_integrated(device) {
        return mem_available().map(|bytes| FreeMemory {
            bytes,
            system_ram: true,
        });
    }
    cuda_free(device).map(|bytes| FreeMemory {
        bytes,
        system_ram: false,
    })
}

/// `MemAvailable` from /proc/meminfo.
pub fn mem_available() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(feature = "cuda")]
fn cuda_is_integrated(device: &Device) -> bool {
    use candle_core::cuda_backend::cudarc::driver::sys::CUdevice_attribute;
    match device {
        Device::Cuda(d) => d
            .cuda_stream()
            .context()
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_INTEGRATED)
            .map(|v| v == 1)
            .unwrap_or(false),
        _ => false,
    }
}

#[cfg(feature = "cuda")]
fn cuda_free(device: &Device) -> Option<u64> {
    match device {
        Device::Cuda(d) => d
            .cuda_stream()
            .context()
            .mem_get_info()
            .ok()
            .map(|(free, _)| free as u64),
        _ => None,
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_is_integrated(_device: &Device) -> bool {
    false
}

#[cfg(not(feature = "cuda"))]
fn cuda_free(_device: &Device) -> Option<u64> {
    None
}

/// Parses `cpu`, `cuda` or `cuda:N` and opens that device.
pub fn open(name: &str) -> Result<Device, DeviceError> {
    name.parse::<DeviceSpec>()?.open()
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
