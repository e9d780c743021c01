//! The typed values of the configuration: one parser (`FromStr`) each, shared by the config
//! file, the command line and `check-config`. To add a value (a device, a dtype), extend
//! its enum and its `FromStr`; the config file and every flag accept it from then on.

use candle_core::DType;
use serde::{Deserialize, Deserializer};
use std::str::FromStr;

pub use moshid_hal::SampleFormat;
pub use moshid_models::device::DeviceSpec;

/// Precision the LM computes in (safetensors weights; GGUF keeps its quantization).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dtype {
    /// bf16 on CUDA with bf16 support, f16 on older GPUs, f32 on the CPU.
    #[default]
    Auto,
    /// 32-bit float.
    F32,
    /// 16-bit float.
    F16,
    /// bfloat16.
    Bf16,
}

/// An unknown dtype name.
#[derive(Debug, thiserror::Error)]
#[error("unknown dtype `{0}`: use auto, f32, f16 or bf16")]
pub struct DtypeError(String);

/// A dtype Mimi has no kernels for.
#[derive(Debug, thiserror::Error)]
#[error("Mimi weights cannot be {0}: use auto, f32 or f16")]
pub struct MimiDtypeError(Dtype);

impl FromStr for Dtype {
    type Err = DtypeError;
    fn from_str(s: &str) -> Result<Self, DtypeError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Dtype::Auto),
            "f32" => Ok(Dtype::F32),
            "f16" => Ok(Dtype::F16),
            "bf16" => Ok(Dtype::Bf16),
            _ => Err(DtypeError(s.to_string())),
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dtype::Auto => "auto",
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
        })
    }
}

/// Where Mimi (the codec) runs, as `[model] mimi_device` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MimiDevice {
    /// The LM's device.
    #[default]
    Same,
    /// The CPU, whatever the LM runs on (Kyutai's server offers the same): leaves the GPU
    /// to the LM on boards where the two together miss 80 ms.
    Cpu,
}

/// An unknown `mimi_device` name.
#[derive(Debug, thiserror::Error)]
#[error("unknown mimi_device `{0}`: use same or cpu")]
pub struct MimiDeviceError(String);

impl FromStr for MimiDevice {
    type Err = MimiDeviceError;
    fn from_str(s: &str) -> Result<Self, MimiDeviceError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "same" => Ok(MimiDevice::Same),
            "cpu" => Ok(MimiDevice::Cpu),
            _ => Err(MimiDeviceError(s.to_string())),
        }
    }
}

impl std::fmt::Display for MimiDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MimiDevice::Same => "same",
            MimiDevice::Cpu => "cpu",
        })
    }
}

impl MimiDevice {
    /// The device Mimi opens, given the LM's.
    pub fn resolve(self, lm_device: &candle_core::Device) -> candle_core::Device {
        match self {
            MimiDevice::Same => lm_device.clone(),
            MimiDevice::Cpu => candle_core::Device::Cpu,
        }
    }
}

impl Dtype {
    /// The candle dtype; None for `auto` (the models pick by device).
    pub fn candle(self) -> Option<DType> {
        match self {
            Dtype::Auto => None,
            Dtype::F32 => Some(DType::F32),
            Dtype::F16 => Some(DType::F16),
            Dtype::Bf16 => Some(DType::BF16),
        }
    }

    /// How Mimi stores its CPU weights for this dtype (`auto` is f32; bf16 has no Mimi
    /// kernels).
    pub fn mimi_weights(self) -> Result<moshid_models::mimi::WeightDtype, MimiDtypeError> {
        use moshid_models::mimi::WeightDtype;
        match self {
            Dtype::Auto | Dtype::F32 => Ok(WeightDtype::F32),
            Dtype::F16 => Ok(WeightDtype::F16),
            Dtype::Bf16 => Err(MimiDtypeError(self)),
        }
    }

    /// The dtype used on `device`: this one, or the device's default for `auto`.
    pub fn resolve(self, device: &candle_core::Device) -> DType {
        self.candle()
            .unwrap_or_else(|| moshid_models::lm::default_dtype(device))
    }
}

/// Deserializes any `FromStr` value from a TOML string, with its parser's message.
pub fn from_str<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: std::fmt::Display,
{
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_parser_each() {
        assert_eq!("BF16".parse::<Dtype>().unwrap(), Dtype::Bf16);
        assert_eq!("auto".parse::<Dtype>().unwrap().candle(), None);
        assert!("f64".parse::<Dtype>().is_err());
        assert_eq!("cuda:2".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(2));
        assert_eq!("gpu".parse::<DeviceSpec>().unwrap().to_string(), "cuda:0");
        assert!("tpu".parse::<DeviceSpec>().is_err());
        assert_eq!("CPU".parse::<MimiDevice>().unwrap(), MimiDevice::Cpu);
        assert_eq!(MimiDevice::default().to_string(), "same");
        assert!("cuda".parse::<MimiDevice>().is_err());
        assert_eq!("s32".parse::<SampleFormat>().unwrap(), SampleFormat::S32);
    }
}
