//! Read rates of the LM's CPU kernels, 1 and all threads: the q8_0 gemv (linear layers at
//! m = 1) for matrices of the 7B model's shapes and one of 1 GB, and the attention step over
//! a full 3000-step window of one 7B layer (32 heads of 128). Prints GB/s of weights or KV
//! cache read per second: compare with the machine's read bandwidth (`moshid bench lm
//! --bandwidth`). Run: `cargo bench -p moshid-models --bench lm_kernels`.

use candle_core::{Device, Tensor};

/// Median and best GB/s of `f` over 30 runs (after 3 warm-ups) in a pool of `threads`.
fn rate(threads: usize, bytes: usize, mut f: impl FnMut() + Send) -> (f64, f64) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool");
    let mut times = pool.install(|| {
        for _ in 0..3 {
            f();
        }
        (0..30)
            .map(|_| {
                let t = std::time::Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect::<Vec<_>>()
    });
    times.sort_by(f64::total_cmp);
    let gbps = |s: f64| bytes as f64 / s / 1e9;
    (gbps(times[times.len() / 2]), gbps(times[0]))
}

fn main() {
    gemv();
    attention();
}

fn attention() {
    let threads_all = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (heads, cap, d) = (32, 3000, 128);
    let q: Vec<f32> = (0..heads * d).map(|i| (i % 7) as f32 * 0.01).collect();
    let k: Vec<f32> = (0..heads * cap * d)
        .map(|i| (i % 13) as f32 * 0.01)
        .collect();
    let v: Vec<f32> = (0..heads * cap * d)
        .map(|i| (i % 11) as f32 * 0.01)
        .collect();
    let mut out = vec![0f32; heads * d];
    let bytes = 2 * heads * cap * d * 4;
    let mut line = format!(
        "attention, 1 layer, window {cap} ({:.0} MB):",
        bytes as f64 / 1e6
    );
    for threads in [1, threads_all] {
        let (med, best) = rate(threads, bytes, || {
            moshid_models::lm::bench_attend(&q, &k, &v, cap, d, &mut out);
            std::hint::black_box(&out);
        });
        line += &format!("  {threads} thread(s): median {med:.1} GB/s, best {best:.1} GB/s");
    }
    println!("{line}");
}

fn gemv() {
    let k = 4096;
    let threads_all = std::thread::available_parallelism().map_or(1, |n| n.get());
    // in_proj, ff_in, and a 1 GB matrix (nothing of it stays in cache).
    for n in [12288usize, 22528, 245760] {
        let blocks: Vec<u8> = (0..n * k / 32 * 34)
            .map(|i| (i * 7 % 251) as u8 & 0x3f)
            .collect();
        let Some(gemv) = moshid_models::lm::bench_q8_gemv(n, k, &blocks) else {
            println!("qgemv: this CPU lacks AVX2/FMA/F16C; the candle fallback is used instead");
            return;
        };
        let x = Tensor::randn(0f32, 1., (1, 1, k), &Device::Cpu).expect("input");
        let mut line = format!("q8_0 [{n} x {k}] ({:.0} MB):", blocks.len() as f64 / 1e6);
        for threads in [1, threads_all] {
            let (med, best) = rate(threads, blocks.len(), || {
                std::hint::black_box(gemv(&x).expect("gemv"));
            });
            line += &format!("  {threads} thread(s): median {med:.1} GB/s, best {best:.1} GB/s");
        }
        println!("{line}");
    }
}
