//! Choosing where the models run (`cpu` or `cuda[:N]`) and in which precision.
//!
//! The precision rules live here as pure functions of what the device can do
//! ([`DeviceKind`]), so that they are tested without a GPU: candle's `supports_bf16()` says
//! yes for any CUDA device, but its bf16 kernels exist only for compute capability 8.0 and
//! newer (Xavier, sm_72, fails with "named symbol not found ... cast_f32_bf16").

use candle_core::{DType, Device};

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
    /// bf16 was asked for on a GPU without bf16 kernels.
    #[error("dtype bf16 needs compute capability 8.0 or newer (Ampere, Orin); this GPU is sm_{major}{minor}: use f16 or f32 (or `auto`, which picks f16 here)")]
    NoBf16 {
        /// Compute capability, major.
        major: u32,
        /// Compute capability, minor.
        minor: u32,
    },
}

/// What a device can do, as far as precision and memory are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// The host CPU.
    Cpu,
    /// A CUDA GPU.
    Cuda {
        /// Compute capability, major (8 = Ampere/Orin, 7 = Volta/Xavier).
        major: u32,
        /// Compute capability, minor.
        minor: u32,
        /// Whether it shares the host's RAM (Jetson): its allocations then come from the
        /// same memory as the CPU's.
        integrated: bool,
    },
}

impl DeviceKind {
    /// Reads what `device` is (for CUDA: its compute capability and whether it is
    /// integrated; an attribute that cannot be read counts as the weakest answer).
    pub fn of(device: &Device) -> Self {
        match device {
            Device::Cpu => Self::Cpu,
            _ => cuda_kind(device),
        }
    }

    /// Whether bf16 arithmetic runs on it: the CPU (candle's generic kernels), or CUDA 8.0+.
    pub fn has_bf16(&self) -> bool {
        match *self {
            Self::Cpu => true,
            Self::Cuda { major, .. } => major >= 8,
        }
    }

    /// The LM's compute dtype for `requested` (`None` = auto): f32 on the CPU; on CUDA bf16
    /// where the GPU has it, else f16. An explicit bf16 on a GPU without it is refused here,
    /// before anything is loaded, rather than failing later inside a kernel.
    pub fn lm_dtype(&self, requested: Option<DType>) -> Result<DType, DeviceError> {
        match (requested, *self) {
            (Some(DType::BF16), Self::Cuda { major, minor, .. }) if major < 8 => {
                Err(DeviceError::NoBf16 { major, minor })
            }
            (Some(d), _) => Ok(d),
            (None, Self::Cpu) => Ok(DType::F32),
            (None, k) if k.has_bf16() => Ok(DType::BF16),
            (None, _) => Ok(DType::F16),
        }
    }

    /// Whether a tensor stored as `stored` must be converted to `target` on the host before
    /// it is copied to this device: when bf16 is involved and the device has no bf16 kernels
    /// (a bf16 checkpoint loaded as f16 on Xavier). Elsewhere the device converts.
    pub fn convert_on_host(&self, stored: DType, target: DType) -> bool {
        stored != target && (stored == DType::BF16 || target == DType::BF16) && !self.has_bf16()
    }
}

#[cfg(feature = "cuda")]
fn cuda_kind(device: &Device) -> DeviceKind {
    use candle_core::cuda_backend::cudarc::driver::sys::CUdevice_attribute as A;
    let Device::Cuda(d) = device else {
        return DeviceKind::Cpu;
    };
    let stream = d.cuda_stream();
    let ctx = stream.context();
    let attr = |a| ctx.attribute(a).ok().and_then(|v| u32::try_from(v).ok());
    DeviceKind::Cuda {
        major: attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR).unwrap_or(0),
        minor: attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR).unwrap_or(0),
        integrated: attr(A::CU_DEVICE_ATTRIBUTE_INTEGRATED).unwrap_or(1) != 0,
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_kind(_device: &Device) -> DeviceKind {
    // Without the cuda feature no other device can be opened.
    DeviceKind::Cpu
}

/// Where to run, as named in the configuration and on the command line: `auto`, `cpu`,
/// `cuda` (GPU 0; `gpu` is accepted too) or `cuda:N`. The one parser of device names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// CUDA GPU 0 when this binary has CUDA and a GPU answers, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA GPU number N.
    Cuda(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, DeviceError> {
        let name = s.trim().to_ascii_lowercase();
        match name.as_str() {
            "auto" => Ok(DeviceSpec::Auto),
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
            DeviceSpec::Auto => write!(f, "auto"),
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// Opens the device (`auto`: see [`DeviceSpec::open_described`]).
    pub fn open(&self) -> Result<Device, DeviceError> {
        self.open_described().map(|(d, _)| d)
    }

    /// Opens the device and says which one it is, and for `auto` why: `cuda:0 (auto)`,
    /// `cpu (auto: this build has no CUDA)` or `cpu (auto: no GPU answered: ...)`.
    pub fn open_described(&self) -> Result<(Device, String), DeviceError> {
        if *self == DeviceSpec::Auto {
            return Ok(match DeviceSpec::Cuda(0).open() {
                Ok(d) => (d, "cuda:0 (auto)".to_string()),
                Err(DeviceError::NoCudaSupport(_)) => (
                    Device::Cpu,
                    "cpu (auto: this build has no CUDA)".to_string(),
                ),
                Err(e) => (Device::Cpu, format!("cpu (auto: no GPU answered: {e})")),
            });
        }
        let d = self.open_exact()?;
        Ok((d, self.to_string()))
    }

    fn open_exact(&self) -> Result<Device, DeviceError> {
        match *self {
            DeviceSpec::Auto | DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(ordinal) => {
                if !candle_core::utils::cuda_is_available() {
                    return Err(DeviceError::NoCudaSupport(self.to_string()));
                }
                Device::new_cuda(ordinal).map_err(|e| DeviceError::Cuda {
                    ordinal,
                    source: without_backtrace(e),
                })
            }
        }
    }
}

/// candle appends a backtrace to its errors when RUST_BACKTRACE is set; the reason a device
/// did not open goes into one log and STATUS line.
fn without_backtrace(e: candle_core::Error) -> candle_core::Error {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => *inner,
        e => e,
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

/// Parses `auto`, `cpu`, `cuda` or `cuda:N` and opens that device.
pub fn open(name: &str) -> Result<Device, DeviceError> {
    name.parse::<DeviceSpec>()?.open()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cuda_open_error_is_one_line_even_with_a_backtrace() {
        let e = candle_core::Error::WithBacktrace {
            inner: Box::new(candle_core::Error::Msg("CUDA_ERROR_NO_DEVICE".into())),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        };
        assert!(e.to_string().lines().count() > 1, "the backtrace is shown");
        let shown = DeviceError::Cuda {
            ordinal: 0,
            source: without_backtrace(e),
        }
        .to_string();
        assert_eq!(shown.lines().count(), 1, "{shown}");
        assert!(shown.starts_with("cannot open CUDA device 0: CUDA_ERROR_NO_DEVICE (is the"));
    }

    const XAVIER: DeviceKind = DeviceKind::Cuda {
        major: 7,
        minor: 2,
        integrated: true,
    };
    const ORIN: DeviceKind = DeviceKind::Cuda {
        major: 8,
        minor: 7,
        integrated: true,
    };
    const H100: DeviceKind = DeviceKind::Cuda {
        major: 9,
        minor: 0,
        integrated: false,
    };

    #[test]
    fn auto_never_picks_bf16_below_sm80() {
        assert_eq!(DeviceKind::Cpu.lm_dtype(None).unwrap(), DType::F32);
        assert_eq!(XAVIER.lm_dtype(None).unwrap(), DType::F16);
        // Turing (sm_75) and Volta (sm_70) too.
        for minor in [0, 5] {
            let k = DeviceKind::Cuda {
                major: 7,
                minor,
                integrated: false,
            };
            assert_eq!(k.lm_dtype(None).unwrap(), DType::F16);
        }
        assert_eq!(ORIN.lm_dtype(None).unwrap(), DType::BF16);
        assert_eq!(H100.lm_dtype(None).unwrap(), DType::BF16);
        // An attribute that could not be read (major 0) is the weakest GPU, not bf16.
        let unknown = DeviceKind::Cuda {
            major: 0,
            minor: 0,
            integrated: true,
        };
        assert_eq!(unknown.lm_dtype(None).unwrap(), DType::F16);
    }

    #[test]
    fn explicit_dtypes() {
        let e = XAVIER.lm_dtype(Some(DType::BF16)).unwrap_err().to_string();
        assert!(e.contains("sm_72") && e.contains("f16"), "{e}");
        for d in [DType::F16, DType::F32] {
            assert_eq!(XAVIER.lm_dtype(Some(d)).unwrap(), d);
        }
        for k in [DeviceKind::Cpu, ORIN, H100] {
            assert_eq!(k.lm_dtype(Some(DType::BF16)).unwrap(), DType::BF16);
        }
    }

    #[test]
    fn bf16_checkpoint_on_xavier_is_converted_on_the_host() {
        // The released bf16 LM on Xavier: auto gives f16 and the cast runs on the CPU.
        let target = XAVIER.lm_dtype(None).unwrap();
        assert!(XAVIER.convert_on_host(DType::BF16, target));
        // An f32 file (Mimi, fixtures) to f16: the GPU's f32->f16 cast exists on every arch.
        assert!(!XAVIER.convert_on_host(DType::F32, DType::F16));
        assert!(!XAVIER.convert_on_host(DType::F16, DType::F16));
        // Where bf16 kernels exist, the GPU converts.
        assert!(!ORIN.convert_on_host(DType::BF16, DType::F16));
        assert!(!H100.convert_on_host(DType::F32, DType::BF16));
        assert!(!DeviceKind::Cpu.convert_on_host(DType::BF16, DType::F32));
    }

    #[test]
    fn the_cpu_is_a_cpu() {
        assert_eq!(DeviceKind::of(&Device::Cpu), DeviceKind::Cpu);
        let free = free_memory(&Device::Cpu).expect("/proc/meminfo");
        assert!(free.bytes > 0 && free.system_ram);
    }

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

    #[test]
    fn auto_is_the_default_and_falls_back_to_the_cpu() {
        assert_eq!(DeviceSpec::default(), DeviceSpec::Auto);
        assert_eq!("AUTO".parse::<DeviceSpec>().unwrap(), DeviceSpec::Auto);
        assert_eq!(DeviceSpec::Auto.to_string(), "auto");
        let (d, why) = DeviceSpec::Auto.open_described().unwrap();
        if candle_core::utils::cuda_is_available() {
            // A CUDA build: the GPU when one answers, else the CPU with the reason.
            assert!(
                why.starts_with("cuda:0") || why.contains("no GPU answered"),
                "{why}"
            );
        } else {
            assert!(d.is_cpu());
            assert_eq!(why, "cpu (auto: this build has no CUDA)");
        }
        let (_, why) = DeviceSpec::Cpu.open_described().unwrap();
        assert_eq!(why, "cpu");
    }
}
