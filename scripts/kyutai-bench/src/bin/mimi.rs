// Times Kyutai's moshi crate (0.6.4) Mimi streaming encode/decode per 80 ms frame, 8 codebooks,
// on a synthetic voiced signal (harmonics of a gliding 140 Hz pitch, 4 Hz envelope).
use candle_core::{Device, Tensor};
use moshi::streaming::{StreamMask, StreamTensor};
use std::time::Instant;

fn synthetic(n: usize) -> Vec<f32> {
    let sr = 24000f32;
    let mut phase = 0f32;
    (0..n)
        .map(|i| {
            let t = i as f32 / sr;
            let f0 = 140.0 + 40.0 * (t * 1.3).sin();
            phase += std::f32::consts::TAU * f0 / sr;
            let env = 0.5 + 0.5 * (t * std::f32::consts::TAU * 4.0).sin();
            let v: f32 = (1..6).map(|h| (phase * h as f32).sin() / h as f32).sum();
            0.2 * env * v
        })
        .collect()
}

fn median(v: &mut Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

fn main() -> candle_core::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let frames: usize = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(30);
    // Usage: mimi MODEL.safetensors [FRAMES] [WARMUP]
    let dev = Device::Cpu;
    let mut m = moshi::mimi::load(&args[1], Some(8), &dev)?;
    // Untimed frames first (3rd argument): 125 fills Mimi's 250-step attention window, as
    // `moshid bench mimi` does by default.
    let warm: usize = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(3);
    let pcm = synthetic((frames + warm) * 1920);
    let mask = StreamMask::empty();
    let mut codes = vec![];
    let mut enc = vec![];
    for i in 0..frames + warm {
        let x = Tensor::from_slice(&pcm[i * 1920..(i + 1) * 1920], (1, 1, 1920), &dev)?;
        let t = Instant::now();
        let c = m.encode_step(&StreamTensor::from_tensor(x), &mask)?;
        let c = c.as_option().unwrap().clone();
        let _ = c.to_vec3::<u32>()?;
        if i >= warm { enc.push(t.elapsed().as_secs_f64() * 1e3); }
        codes.push(c);
    }
    let mut dec = vec![];
    for (i, c) in codes.iter().enumerate() {
        let t = Instant::now();
        let y = m.decode_step(&StreamTensor::from_tensor(c.clone()), &mask)?;
        let _ = y.as_option().unwrap().flatten_all()?.to_vec1::<f32>()?;
        if i >= warm { dec.push(t.elapsed().as_secs_f64() * 1e3); }
    }
    let first: Vec<u32> = codes[warm].flatten_all()?.to_vec1()?;
    let (e, d) = (median(&mut enc), median(&mut dec));
    println!("{{\"impl\":\"kyutai-moshi-0.6.4\",\"frames\":{frames},\"warmup_frames\":{warm},\"encode_ms_median\":{e:.3},\"decode_ms_median\":{d:.3},\"rtf\":{:.3},\"codes_first_timed\":{:?}}}", (e + d) / 80.0, first);
    Ok(())
}
