//! Memory stays flat when a conversation runs far past the attention window. Its own test
//! binary: RSS is per process, so no other test may allocate alongside it.

use std::path::{Path, PathBuf};

use candle_core::Device;
use moshid_models::lm::{LmConfig, LmGen, LmModel, Sampling};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lm")
}

fn user_codes() -> Vec<[u32; 8]> {
    let e: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap())
            .unwrap();
    let rows: Vec<Vec<u32>> = serde_json::from_value(e["user_codes"].clone()).unwrap();
    (0..rows[0].len())
        .map(|t| std::array::from_fn(|k| rows[k][t]))
        .collect()
}

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let l = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

#[test]
fn long_run_past_the_context_keeps_memory_flat() {
    // 260 steps through an 8-step window: the ring wraps 32 times.
    let c = LmConfig::from_json_file(&fixtures().join("config.json")).unwrap();
    let m = LmModel::load(
        &fixtures().join("model_candle.safetensors"),
        &c,
        None,
        &Device::Cpu,
    )
    .unwrap();
    let codes = user_codes();
    let mut g = LmGen::new(m, Sampling::default(), 8).unwrap();
    let cache = g.cache_bytes();
    let mut rss_at_60 = 0;
    for t in 0..260 {
        let out = g.step(&codes[t % codes.len()]).unwrap();
        assert_eq!(out.is_some(), t >= 1);
        if t == 60 {
            rss_at_60 = rss_bytes();
        }
    }
    assert_eq!(g.cache_bytes(), cache);
    assert_eq!(g.steps(), 260);
    let growth = rss_bytes() as i64 - rss_at_60 as i64;
    eprintln!("RSS growth over 200 steps past the context: {growth} bytes");
    assert!(
        growth < 2 << 20,
        "memory grew by {growth} bytes over 200 steps"
    );
}
