//! `moshid bench web`: what the web endpoint costs the server per 80 ms frame, model aside:
//! reading the client's Ogg pages and decoding its Opus (the web client's 20 ms packets, two
//! per page), encoding Moshi's reply (two 40 ms packets) and writing its pages. CPU time of
//! the benchmarking thread, one JSON line.

use crate::web::ogg::{OggWriter, FLAG_BOS};
use crate::web::opus;
use crate::web::stream::{AudioIn, AudioOut};
use moshid_hal::FRAME_SAMPLES;
use serde::Serialize;

/// Arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Timed frames (80 ms each).
    #[arg(long, default_value_t = 500)]
    frames: usize,
    /// Instead: N concurrent `moshid client` sessions against a `moshid demo --web` started
    /// here (per-client latency, dropped frames, server CPU per frame).
    #[arg(long)]
    clients: Option<usize>,
    /// With --clients: seconds each client talks.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
}

fn thread_cpu_us() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1e6 + ts.tv_nsec as f64 / 1e3
}

/// A voice-like test signal: a gliding pulse train through a formant, in syllables.
pub(super) fn signal(n: usize) -> Vec<f32> {
    let (mut phase, mut f) = (0.0f32, 0.0f32);
    (0..n)
        .map(|i| {
            let t = i as f32 / 24_000.0;
            phase += (150.0 + 40.0 * (t * 0.9).sin()) / 24_000.0;
            let pulse = if phase >= 1.0 {
                phase -= 1.0;
                1.0
            } else {
                0.0
            };
            f = 0.93 * f + pulse;
            0.2 * f * (t * 12.0).sin().abs()
        })
        .collect()
}

/// The web client's stream: 20 ms packets, two per page, one page per message.
fn client_messages(pcm: &[f32]) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut enc = ::opus::Encoder::new(24_000, ::opus::Channels::Mono, ::opus::Application::Audio)?;
    let mut w = OggWriter::new(1);
    let mut head = Vec::new();
    w.page(&opus::opus_head(48_000), 0, FLAG_BOS, &mut head);
    w.page(&opus::opus_tags("bench"), 0, 0, &mut head);
    let mut out = vec![head];
    for pair in pcm.chunks_exact(960) {
        // Two 20 ms packets on one page, laced by hand (our writer does one per page).
        let a = enc.encode_vec_float(&pair[..480], 1500)?;
        let b = enc.encode_vec_float(&pair[480..], 1500)?;
        let mut page = b"OggS\0\0".to_vec();
        page.extend_from_slice(&[0; 20]);
        let lace = |p: &[u8], l: &mut Vec<u8>| {
            l.extend(std::iter::repeat_n(255u8, p.len() / 255));
            l.push((p.len() % 255) as u8);
        };
        let mut lacing = Vec::new();
        lace(&a, &mut lacing);
        lace(&b, &mut lacing);
        page.push(lacing.len() as u8);
        page.extend(lacing);
        page.extend(a);
        page.extend(b);
        let crc = crate::web::ogg::crc32(&page);
        page[22..26].copy_from_slice(&crc.to_le_bytes());
        out.push(page);
    }
    Ok(out)
}

/// Runs the benchmark.
pub fn run(a: Args) -> anyhow::Result<()> {
    if let Some(n) = a.clients {
        return super::bench_web_clients::run(n, a.seconds);
    }
    let frames = a.frames.max(1);
    let pcm = signal((frames + 1) * FRAME_SAMPLES);
    let messages = client_messages(&pcm)?;
    let mut input = AudioIn::new()?;
    let mut output = AudioOut::new()?;
    let mut frame = vec![0.0f32; FRAME_SAMPLES];
    let mut out_bytes = Vec::new();
    let (mut t_in, mut t_out, mut n_in, mut n_out) = (0.0, 0.0, 0usize, 0usize);
    for m in &messages {
        let t0 = thread_cpu_us();
        input.push(m)?;
        let got = input.next_frame(&mut frame);
        let t1 = thread_cpu_us();
        t_in += t1 - t0;
        if got && n_out < frames {
            out_bytes.clear();
            output.frame(&frame, &mut out_bytes)?;
            t_out += thread_cpu_us() - t1;
            n_out += 1;
            n_in += 1;
        }
    }
    let per_in = t_in / n_in.max(1) as f64;
    let per_out = t_out / n_out.max(1) as f64;
    let round1 = |us: f64| (us * 10.0).round() / 10.0;
    let line = WebReport {
        bench: "web",
        frames: n_out,
        input_us_per_frame: round1(per_in),
        output_us_per_frame: round1(per_out),
        total_us_per_frame: round1(per_in + per_out),
        input: "web client: 20 ms Opus packets, 2 per Ogg page -> 80 ms frame",
        output: "80 ms frame -> 2 x 40 ms Opus packets, one Ogg page each",
    };
    println!("{}", serde_json::to_string(&line)?);
    Ok(())
}

/// The line `bench web` prints (times to 0.1 us).
#[derive(Serialize)]
struct WebReport {
    /// `web`: which bench printed the line.
    bench: &'static str,
    /// 80 ms frames timed.
    frames: usize,
    /// Thread CPU time to read the client's pages and decode its Opus, per frame.
    input_us_per_frame: f64,
    /// Thread CPU time to encode the reply and write its pages, per frame.
    output_us_per_frame: f64,
    /// Both directions.
    total_us_per_frame: f64,
    /// What the input side is.
    input: &'static str,
    /// What the output side is.
    output: &'static str,
}
