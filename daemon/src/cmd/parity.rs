//! `moshid parity`: Mimi and the LM on a device and dtype against the committed reference
//! fixtures, one JSON line per model (what `scripts/gpu-check.sh` runs on a GPU).

use std::path::PathBuf;

use clap::Args as ClapArgs;
use serde::Serialize;

/// Arguments of `moshid parity`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The fixtures folder (holds `mimi/` and `lm/`): models/tests/fixtures in the repository.
    #[arg(long, default_value = "models/tests/fixtures")]
    pub fixtures: PathBuf,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value_t = crate::config::DeviceSpec::Cpu)]
    pub device: crate::config::DeviceSpec,
    /// Compute dtype for both models (`auto`: the LM's default for the device).
    #[arg(long, default_value_t = crate::config::Dtype::F32)]
    pub dtype: crate::config::Dtype,
    /// Which model: mimi, lm or both.
    #[arg(long, default_value = "both", value_parser = ["mimi", "lm", "both"])]
    pub model: String,
}

/// Runs `moshid parity`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let device = a.device.open()?;
    let kind = moshid_models::device::DeviceKind::of(&device);
    let dtype = kind.lm_dtype(a.dtype.candle())?;
    let device_kind = format!("{kind:?}");
    let head = |model| Head {
        part: "parity",
        model,
        device: a.device.to_string(),
        device_kind: device_kind.clone(),
    };
    if a.model != "lm" {
        let r = moshid_models::parity::mimi(&a.fixtures, &device, dtype)?;
        print(head("mimi"), r)?;
    }
    if a.model != "mimi" {
        let r = moshid_models::parity::lm(&a.fixtures, &device, dtype)?;
        print(head("lm"), r)?;
    }
    Ok(())
}

/// Prints one model's line: what was compared, then its figures.
fn print(head: Head, report: impl Serialize) -> serde_json::Result<()> {
    let line = Line { head, report };
    println!("{}", serde_json::to_string(&line)?);
    Ok(())
}

/// The fields every line of `moshid parity` starts with.
#[derive(Serialize)]
struct Head {
    /// `parity`: which command printed the line.
    part: &'static str,
    /// `mimi` or `lm`.
    model: &'static str,
    /// The device asked for: `cpu`, `cuda` or `cuda:N`.
    device: String,
    /// What the opened device can do, as `Debug` prints it (`Cpu`, `Cuda { major: 8, .. }`).
    device_kind: String,
}

/// A line of `moshid parity`: the head, then the model's parity figures beside it.
#[derive(Serialize)]
struct Line<R> {
    /// What was compared.
    #[serde(flatten)]
    head: Head,
    /// The figures (`MimiParity` or `LmParity`).
    #[serde(flatten)]
    report: R,
}
