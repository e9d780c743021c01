//! The constructor arguments shared by `Tokenizer` and `StreamTokenizer`: checkpoint path,
//! codebooks, dtype, `max_seq_len`, device and the Mimi configuration.

use std::path::PathBuf;

use candle_core::Device;
use moshid_models::mimi::{Mimi, MimiConfig};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use crate::errors::{mimi_err, runtime_err, type_err, value_err};

/// Parses `"cpu"`, `"cuda"` or `"cuda:N"`.
pub fn parse_device(device: &str) -> PyResult<Device> {
    let ordinal = match device {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        d => match d.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => n,
            _ => {
                return Err(value_err(format!(
                    "unsupported device '{device}': expected 'cpu', 'cuda' or 'cuda:N'"
                )))
            }
        },
    };
    cuda_device(ordinal)
}

#[cfg(feature = "cuda")]
fn cuda_device(ordinal: usize) -> PyResult<Device> {
    Device::new_cuda(ordinal)
        .map_err(|e| runtime_err(format!("cannot open CUDA device {ordinal}: {e}")))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(_ordinal: usize) -> PyResult<Device> {
    Err(runtime_err(
        "this build of moshid_mimi has no CUDA support; rebuild it with the `cuda` feature \
         (pip install ./models/python --config-settings=build-args='--features cuda')",
    ))
}

/// The device's name as the constructor accepts it.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// moshid's Mimi computes in float32; the other names rustymimi accepts are refused plainly
/// rather than silently computed in another precision than asked.
pub fn check_dtype(dtype: &str) -> PyResult<()> {
    match dtype {
        "f32" => Ok(()),
        "f16" | "bf16" => Err(value_err(format!(
            "dtype '{dtype}' is not supported: moshid_mimi computes in float32 (dtype='f32')"
        ))),
        d => Err(value_err(format!(
            "unsupported dtype '{d}': expected 'f32'"
        ))),
    }
}

/// `None`: the released Mimi; a `str`/`PathLike`: a JSON file in the reference's
/// `mimi_config` layout; a `dict`: the same layout in memory.
pub fn parse_config(config: Option<&Bound<'_, PyAny>>) -> PyResult<MimiConfig> {
    let Some(c) = config else {
        return Ok(MimiConfig::v0_1());
    };
    if c.is_none() {
        return Ok(MimiConfig::v0_1());
    }
    if let Ok(d) = c.cast::<PyDict>() {
        let json = c.py().import("json")?.call_method1("dumps", (d,))?;
        let text = json.cast::<PyString>()?.to_cow()?.into_owned();
        let cfg: MimiConfig = serde_json::from_str(&text).map_err(|e| {
            value_err(format!(
                "config is not a Mimi config ({e}); expected keys sample_rate, channels, \
                 frame_rate, seanet, transformer, quantizer"
            ))
        })?;
        cfg.validate().map_err(mimi_err)?;
        return Ok(cfg);
    }
    let path: PathBuf = c.extract().map_err(|_| {
        type_err("config must be None, a dict or a path to a Mimi config JSON file")
    })?;
    MimiConfig::from_json_file(&path).map_err(mimi_err)
}

/// Everything a constructor needs to load Mimi.
pub struct LoadArgs {
    /// The safetensors checkpoint.
    pub path: PathBuf,
    /// Active codebooks.
    pub num_codebooks: usize,
    /// The configuration.
    pub config: MimiConfig,
    /// Where to compute.
    pub device: Device,
}

impl LoadArgs {
    /// Checks the Python-side arguments (in the order rustymimi's signature lists them).
    pub fn parse(
        path: PathBuf,
        num_codebooks: i64,
        dtype: &str,
        max_seq_len: Option<i64>,
        device: &str,
        config: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<LoadArgs> {
        check_dtype(dtype)?;
        // Mimi's transformers keep a fixed window (250 steps), so there is no maximum
        // length to size: the argument is only checked, for rustymimi compatibility.
        if let Some(m) = max_seq_len {
            if m <= 0 {
                return Err(value_err(format!("max_seq_len must be positive, got {m}")));
            }
        }
        let config = parse_config(config)?;
        let num_codebooks = usize::try_from(num_codebooks)
            .ok()
            .filter(|&k| (1..=config.quantizer.n_q).contains(&k))
            .ok_or_else(|| {
                value_err(format!(
                    "num_codebooks must be between 1 and {}, got {num_codebooks}",
                    config.quantizer.n_q
                ))
            })?;
        Ok(LoadArgs {
            path,
            num_codebooks,
            config,
            device: parse_device(device)?,
        })
    }

    /// Maps and checks the checkpoint, with the GIL released.
    pub fn load(&self, py: Python<'_>) -> PyResult<Mimi> {
        py.detach(|| Mimi::load(&self.path, &self.config, self.num_codebooks, &self.device))
            .map_err(mimi_err)
    }
}
