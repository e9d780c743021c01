//! `moshid parity`: Mimi and the LM on a device and dtype against the committed reference
//! fixtures, one JSON line per model (what `scripts/gpu-check.sh` runs on a GPU).

use std::path::PathBuf;

use clap::Args as ClapArgs;

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
    let head = |model: &str| {
        serde_json::json!({
            "part": "parity",
            "model": model,
            "device": a.device.to_string(),
            "device_kind": format!("{kind:?}"),
        })
    };
    if a.model != "lm" {
        let r = moshid_models::parity::mimi(&a.fixtures, &device, dtype)?;
        println!("{}", merge(head("mimi"), serde_json::to_value(r)?));
    }
    if a.model != "mimi" {
        let r = moshid_models::parity::lm(&a.fixtures, &device, dtype)?;
        println!("{}", merge(head("lm"), serde_json::to_value(r)?));
    }
    Ok(())
}

fn merge(mut a: serde_json::Value, b: serde_json::Value) -> serde_json::Value {
    if let (Some(a), serde_json::Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}
