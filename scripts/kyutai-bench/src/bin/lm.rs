// Times Kyutai's moshi crate LM step on a GGUF (same random weights as moshid's bench).
use candle_core::{DType, Device};
use std::time::Instant;

fn peak_rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0) * 1024
}

fn cpu_ms() -> f64 {
    // utime + stime (fields 14, 15 of /proc/self/stat), in clock ticks of 10 ms.
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = s.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) * 10.0
}

fn main() -> candle_core::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let steps: usize = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(8);
    let dev = Device::Cpu;
    let t0 = Instant::now();
    let model = moshi::lm::load_streaming(&args[1], DType::F32, &dev)?;
    let load_s = t0.elapsed().as_secs_f64();
    let lp = || candle_transformers::generation::LogitsProcessor::from_sampling(
        42, candle_transformers::generation::Sampling::TopK { k: 250, temperature: 0.8 });
    let mut state = moshi::lm_generate_multistream::State::new(
        model, steps + 10, lp(), lp(), None, None, None, moshi::lm_generate_multistream::Config::v0_1());
    let mut text = 32000u32;
    let mut x = 12345u32;
    let mut times = vec![];
    let mut cpu0 = 0.0;
    for i in 0..steps + 2 {
        if i == 2 { cpu0 = cpu_ms(); }
        let codes: Vec<u32> = (0..8).map(|_| { x = x.wrapping_mul(1664525).wrapping_add(1013904223); (x >> 8) % 2048 }).collect();
        let t = Instant::now();
        text = state.step_without_ca_src(text, &codes, None)?;
        if i >= 2 { times.push(t.elapsed().as_secs_f64() * 1000.0); }
    }
    let cpu = (cpu_ms() - cpu0) / steps as f64;
    times.sort_by(f64::total_cmp);
    println!("{{\"bench\":\"kyutai-moshi-0.6.4-lm\",\"step_ms_median\":{},\"load_s\":{load_s},\"peak_rss_bytes\":{},\"steps\":{steps},\"cpu_ms_per_step\":{cpu}}}", times[times.len()/2], peak_rss());
    Ok(())
}
