//! Cost of the per-frame audio path in microseconds per 80 ms frame:
//! capture (48 kHz stereo -> channel mix -> 24 kHz mono), playback (24 kHz mono -> 48 kHz
//! stereo) and echo cancellation, on speech echoed through a synthetic room.
//! `cargo bench -p moshid-hal` prints the figures; the goal is <= 2000 us per frame.

use moshid_hal::aec::{AecOptions, EchoCanceller};
use moshid_hal::resample::StreamResampler;
use moshid_hal::stream::mix;
use moshid_hal::FRAME_SAMPLES;
use std::path::PathBuf;
use std::time::Instant;

/// CPU time of this thread in seconds: unlike wall time it does not count the time other
/// processes (parallel builds) hold the cores.
fn cpu_now() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid pointer we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn main() {
    let clip = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/far_speech_16k.wav");
    let speech = moshid_hal::wav::read_mono_24k(&clip).expect("committed clip");
    let frames = speech.len() / FRAME_SAMPLES;
    // A 48 kHz stereo capture of the speech (duplicated channels) and a crude echo.
    let at48 = moshid_hal::resample::resample_clip(&speech, 24_000, 48_000).expect("resample");
    let stereo48: Vec<f32> = at48.iter().flat_map(|&v| [v, v]).collect();
    let echo: Vec<f32> = (0..speech.len())
        .map(|i| 0.3 * speech[i.saturating_sub(300)] + 0.1 * speech[i.saturating_sub(900)])
        .collect();

    let mut down = StreamResampler::new(48_000, 24_000).expect("resampler");
    let mut up = StreamResampler::new(24_000, 48_000).expect("resampler");
    let mut aec = EchoCanceller::new(&AecOptions::default()).expect("aec");
    let mut mono48 = vec![0.0f32; 3840];
    let mut frame = vec![0.0f32; FRAME_SAMPLES];
    let mut out48 = vec![0.0f32; 3840 + 256];
    let mut out_stereo = vec![0.0f32; 2 * (3840 + 256)];
    let mut near = vec![0.0f32; FRAME_SAMPLES];
    let (mut t_cap, mut t_play, mut t_aec) = (0f64, 0f64, 0f64);
    let rounds = 3;
    let (wall0, cpu0) = (Instant::now(), cpu_now());
    for _ in 0..rounds {
        for f in 0..frames {
            let t = Instant::now();
            let chunk = &stereo48[f * 7680..(f + 1) * 7680];
            let n = mix(chunk, 2, &[0, 1], 1.0, &mut mono48);
            down.push(&mono48[..n]).expect("push");
            while down.pop(&mut frame) {}
            let t1 = Instant::now();
            aec.process(&speech[f * FRAME_SAMPLES..(f + 1) * FRAME_SAMPLES], {
                near.copy_from_slice(&echo[f * FRAME_SAMPLES..(f + 1) * FRAME_SAMPLES]);
                &mut near
            })
            .expect("aec");
            let t2 = Instant::now();
            up.push(&frame).expect("push");
            let k = up.available().min(out48.len());
            up.pop(&mut out48[..k]);
            for (o, &v) in out_stereo.chunks_exact_mut(2).zip(&out48[..k]) {
                o[0] = v;
                o[1] = v;
            }
            let t3 = Instant::now();
            t_cap += (t1 - t).as_secs_f64();
            t_aec += (t2 - t1).as_secs_f64();
            t_play += (t3 - t2).as_secs_f64();
        }
    }
    let (wall, cpu) = (wall0.elapsed().as_secs_f64(), cpu_now() - cpu0);
    // Wall-clock splits scaled to CPU time, so a loaded machine does not inflate them.
    let k = cpu / wall;
    let (t_cap, t_play, t_aec) = (t_cap * k, t_play * k, t_aec * k);
    let n = (frames * rounds) as f64;
    let us = |t: f64| t * 1e6 / n;
    println!(
        "audio path, {n} frames of 80 ms (speech), CPU microseconds per frame \
         (this thread got {:.0}% of a core):",
        100.0 * k
    );
    println!(
        "  capture  48 kHz stereo -> mix -> 24 kHz mono : {:8.1} us",
        us(t_cap)
    );
    println!(
        "  playback 24 kHz mono -> 48 kHz stereo        : {:8.1} us",
        us(t_play)
    );
    println!(
        "  AEC3 (24 kHz in, 32 kHz inside, HPF)         : {:8.1} us",
        us(t_aec)
    );
    let total = us(t_cap + t_play + t_aec);
    println!(
        "  total                                        : {total:8.1} us ({:.1}% of real time; goal <= 2000 us)",
        total / 800.0
    );
}
