//! The candle path of batched Mimi streams in f32 on the CPU (`MOSHID_MIMI_ENGINE=candle`:
//! candle's tensors over the packed small-batch kernels, whose convolutions unfold each
//! stream's row and multiply all rows at once). One test in its own binary, because the
//! engine is chosen by an environment variable, which is process-wide.

mod streams;

use candle_core::Device;
use moshid_models::mimi::{Mimi, MimiConfig, ENGINE_ENV};
use streams::{fixtures, scenario, Bound};

#[test]
fn candle_f32_streams_in_a_batch_match_each_alone() {
    // Set before any model loads; no other test in this binary reads the environment.
    std::env::set_var(ENGINE_ENV, "candle");
    let cfg = MimiConfig::from_json_file(&fixtures().join("mimi_config.json")).unwrap();
    let path = fixtures().join("mimi_small.safetensors");
    let load = || Mimi::load(&path, &cfg, 8, &Device::Cpu).expect("weights load");
    assert_eq!(load().kernels(), "candle");
    scenario("candle f32", &load, 30, Bound::EXACT);
}
