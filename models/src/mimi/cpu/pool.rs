//! A few long-lived worker threads for the matrix products, handing out task indices through
//! one atomic counter: nothing is allocated per product (rayon's injector allocates a block
//! every 63 jobs sent from outside its pool), and a worker the OS has descheduled only means
//! the caller runs more of the tasks itself.
//!
//! One product at a time uses the workers; a second caller meanwhile runs its tasks alone.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};

/// Environment variable setting the number of threads (caller included) for Mimi's products.
pub(crate) const THREADS_ENV: &str = "MOSHID_MIMI_THREADS";

/// A job's code with its lifetime erased; valid while the caller waits in [`run`].
#[derive(Clone, Copy)]
struct Job(*const (dyn Fn(usize) + Sync));
// SAFETY: the pointee is `Sync`; the pointer is only dereferenced by a thread that claimed a
// task of the job's generation, which the caller outlives (it waits for every task).
unsafe impl Send for Job {}

struct Slot {
    gen: u32,
    job: Option<Job>,
    tasks: usize,
}

struct Shared {
    slot: Mutex<Slot>,
    wake: Condvar,
    /// `generation << 32 | next task`.
    state: AtomicU64,
    /// Tasks of the current generation finished.
    done: AtomicUsize,
    /// Workers that have entered their loop.
    started: AtomicUsize,
}

struct Pool {
    busy: Mutex<()>,
    shared: &'static Shared,
    threads: usize,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let threads = std::env::var(THREADS_ENV)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(8)))
            .max(1);
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            slot: Mutex::new(Slot {
                gen: 0,
                job: None,
                tasks: 0,
            }),
            wake: Condvar::new(),
            state: AtomicU64::new(0),
            done: AtomicUsize::new(0),
            started: AtomicUsize::new(0),
        }));
        let mut spawned = 1;
        for i in 1..threads {
            let ok = std::thread::Builder::new()
                .name(format!("mimi-worker-{i}"))
                .spawn(move || worker(shared))
                .is_ok();
            spawned += usize::from(ok);
        }
        // A new thread allocates while it starts (the test harness's output capture, TLS
        // destructor lists): wait for that here, at load, not during a later frame (under
        // emulation or heavy load a worker can start several frames late).
        while shared.started.load(Ordering::Acquire) < spawned - 1 {
            std::thread::yield_now();
        }
        Pool {
            busy: Mutex::new(()),
            shared,
            threads: spawned,
        }
    })
}

/// Threads a product can use (the caller included).
pub(crate) fn threads() -> usize {
    pool().threads
}

/// Runs `f(0..tasks)` across the workers and the calling thread; returns when all are done.
pub(crate) fn run(tasks: usize, f: &(dyn Fn(usize) + Sync)) {
    let p = pool();
    let guard = match p.busy.try_lock() {
        Ok(g) if p.threads > 1 && tasks > 1 => g,
        _ => {
            (0..tasks).for_each(f);
            return;
        }
    };
    let s = p.shared;
    // SAFETY (lifetime erasure): workers dereference the job only after claiming one of this
    // generation's tasks, and this function returns only once every task is done.
    let job = Job(unsafe {
        std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static (dyn Fn(usize) + Sync)>(f)
    });
    let gen = {
        let mut slot = s.slot.lock().unwrap_or_else(|e| e.into_inner());
        slot.gen = slot.gen.wrapping_add(1);
        slot.job = Some(job);
        slot.tasks = tasks;
        s.done.store(0, Ordering::Relaxed);
        s.state.store(u64::from(slot.gen) << 32, Ordering::Release);
        slot.gen
    };
    s.wake.notify_all();
    claim(s, gen, tasks, job);
    let mut spins = 0u32;
    while s.done.load(Ordering::Acquire) < tasks {
        spins += 1;
        if spins < 1 << 12 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
    s.slot.lock().unwrap_or_else(|e| e.into_inner()).job = None;
    drop(guard);
}

/// Runs tasks of generation `gen` until none is left.
fn claim(s: &Shared, gen: u32, tasks: usize, job: Job) {
    loop {
        let v = s.state.load(Ordering::Acquire);
        let idx = (v & 0xffff_ffff) as usize;
        if (v >> 32) as u32 != gen || idx >= tasks {
            return;
        }
        if s.state
            .compare_exchange_weak(v, v + 1, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            // SAFETY: task `idx` of `gen` is claimed, so the caller is still waiting in `run`
            // and the job it points at is alive.
            unsafe { (*job.0)(idx) };
            s.done.fetch_add(1, Ordering::Release);
        }
    }
}

fn worker(s: &'static Shared) {
    s.started.fetch_add(1, Ordering::Release);
    let mut seen = 0u32;
    loop {
        // Spin a little first: the products of one frame come a few microseconds apart.
        for _ in 0..2000 {
            if (s.state.load(Ordering::Acquire) >> 32) as u32 != seen {
                break;
            }
            std::hint::spin_loop();
        }
        let (gen, job, tasks) = {
            let mut slot = s.slot.lock().unwrap_or_else(|e| e.into_inner());
            while slot.gen == seen {
                slot = s.wake.wait(slot).unwrap_or_else(|e| e.into_inner());
            }
            (slot.gen, slot.job, slot.tasks)
        };
        seen = gen;
        if let Some(job) = job {
            claim(s, gen, tasks, job);
        }
    }
}

/// A raw pointer the tasks of one [`par_chunks`] call share; they touch disjoint chunks.
#[derive(Clone, Copy)]
struct ChunkPtr(*mut f32);
// SAFETY: each task derives a slice of its own chunk only; `par_chunks` returns after every
// task, while the caller's `&mut` borrows are still held.
unsafe impl Send for ChunkPtr {}
unsafe impl Sync for ChunkPtr {}

/// The body of a [`par_chunks`] task: its index and its chunks of the two buffers.
pub(crate) type ChunkTask<'a> = dyn Fn(usize, &mut [f32], &mut [f32]) + Sync + 'a;

/// Runs `f(i, &mut a[i * ca..][..ca], &mut b[i * cb..][..cb])` for `i` in `0..tasks` across
/// the workers: per-head attention with its own score scratch, or a long elementwise pass.
/// Each task's arithmetic is the same as on one thread, so the bits do not depend on the split.
///
/// Panics when `a` or `b` is shorter than `tasks` chunks (a programming error).
pub(crate) fn par_chunks(
    tasks: usize,
    (a, ca): (&mut [f32], usize),
    (b, cb): (&mut [f32], usize),
    f: &ChunkTask,
) {
    assert!(
        a.len() >= tasks * ca && b.len() >= tasks * cb,
        "par_chunks: buffers too short"
    );
    let (pa, pb) = (ChunkPtr(a.as_mut_ptr()), ChunkPtr(b.as_mut_ptr()));
    run(tasks, &|i| {
        let (pa, pb) = (pa, pb);
        // SAFETY: chunk `i` of each buffer is in bounds (asserted) and only task `i` uses it.
        let (x, y) = unsafe {
            (
                std::slice::from_raw_parts_mut(pa.0.add(i * ca), ca),
                std::slice::from_raw_parts_mut(pb.0.add(i * cb), cb),
            )
        };
        f(i, x, y);
    });
}
