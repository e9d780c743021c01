//! Read rate of the CPU q8_0 gemv kernel (the LM's linear layers at m = 1), 1 and all
//! threads, for matrices of the 7B model's shapes and one of 1 GB. Prints GB/s of weights
//! read per second: compare with the machine's read bandwidth (`moshid bench lm
//! --bandwidth`). Run: `cargo bench -p moshid-models --bench qgemv`.

use candle_core::{Device, Tensor};

fn main() {
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
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("thread pool");
            let mut times = pool.install(|| {
                for _ in 0..3 {
                    gemv(&x).expect("gemv");
                }
                (0..30)
                    .map(|_| {
                        let t = std::time::Instant::now();
                        std::hint::black_box(gemv(&x).expect("gemv"));
                        t.elapsed().as_secs_f64()
                    })
                    .collect::<Vec<_>>()
            });
            times.sort_by(f64::total_cmp);
            let gbps = |s: f64| blocks.len() as f64 / s / 1e9;
            line += &format!(
                "  {threads} thread(s): median {:.1} GB/s, best {:.1} GB/s",
                gbps(times[times.len() / 2]),
                gbps(times[0])
            );
        }
        println!("{line}");
    }
}
