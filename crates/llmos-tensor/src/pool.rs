//! The kernels' thread pool: N - 1 workers plus the calling thread, which takes part in
//! every job. A decode step runs hundreds of parallel sections of a few microseconds each,
//! so workers spin on a generation counter between jobs (and sleep only after a while with
//! nothing to do). Each thread owns a contiguous run of a job's tasks and takes them in
//! order from its own cache line; a thread that runs out takes the last tasks of another's
//! run. So a thread's tasks are neighbours in memory (a matmul's rows: one stream that the
//! kernels' prefetch runs along, not a jump per task), and claiming a task costs no cache
//! line moving between cores until the runs are nearly done. Measured against rayon on
//! SmolLM2 decoding (see BENCHMARKS.md): rayon parks its workers and makes the caller wait
//! for them, which costs a context switch per section.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps.
const SPIN: Duration = Duration::from_millis(5);

type Job = &'static (dyn Fn(usize) + Sync);

/// What the threads share. A job is published without locks: the caller writes `job`,
/// `active` and the runs, then moves `generation` (release); a worker that sees the new
/// generation (acquire) reads them and checks the generation again, so it never acts on a
/// mix of two jobs. The fields stay as written until every thread that takes part has
/// finished (`pending` back to 0), so a worker of the job always reads that job's.
struct Shared {
    generation: AtomicUsize,
    /// The current job: the address of the caller's reference to its closure, valid while
    /// the caller waits in [`parallel_for`].
    job: AtomicPtr<Job>,
    /// How many threads (caller included) take part in the current job.
    active: AtomicUsize,
    /// Each thread's run of the current job's tasks, [lo, hi) packed as hi << 32 | lo.
    runs: Vec<Run>,
    pending: AtomicUsize,
    panicked: AtomicBool,
    /// Workers asleep (or about to be) on `wake`; the caller takes `sleep` only when some are.
    sleepers: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
}

/// A thread's run of tasks on a cache line of its own (the owner claims from the front
/// without disturbing the others).
#[repr(align(128))]
struct Run(AtomicU64);

impl Run {
    /// Takes the first task of the run (`back` false) or the last (`back` true).
    fn take(&self, back: bool) -> Option<usize> {
        let mut v = self.0.load(Ordering::Relaxed);
        loop {
            let (lo, hi) = (v & 0xffff_ffff, v >> 32);
            if lo >= hi {
                return None;
            }
            let (next, task) = if back {
                (((hi - 1) << 32) | lo, hi - 1)
            } else {
                (v + 1, lo)
            };
            match self
                .0
                .compare_exchange_weak(v, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Some(task as usize),
                Err(now) => v = now,
            }
        }
    }
}

struct Pool {
    /// Threads that take part in jobs now (at most `spawned` + 1).
    threads: AtomicUsize,
    spawned: usize,
    shared: Arc<Shared>,
    run: Mutex<()>,
}

static POOL: OnceLock<Pool> = OnceLock::new();

thread_local! {
    static IN_JOB: Cell<bool> = const { Cell::new(false) };
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |v| v.get())
}

/// Sets the number of threads that run each job (0 = all cores). The pool is made on first
/// use with enough workers for max(n, cores); later calls change how many take part, up to
/// that.
pub fn init(n: usize) {
    let n = if n == 0 { cores() } else { n };
    let p = POOL.get_or_init(|| Pool::new(n.max(cores())));
    p.threads.store(n.min(p.spawned + 1), Ordering::Relaxed);
}

/// Threads that run each job (workers + the caller).
pub fn threads() -> usize {
    pool().threads.load(Ordering::Relaxed)
}

/// Threads a parallel section started from here runs on: 1 inside a pool task (nested
/// sections run serially on the calling thread), else [`threads`].
pub fn threads_here() -> usize {
    if IN_JOB.with(|c| c.get()) {
        1
    } else {
        threads()
    }
}

fn pool() -> &'static Pool {
    POOL.get_or_init(|| Pool::new(cores()))
}

impl Pool {
    fn new(threads: usize) -> Pool {
        let shared = Arc::new(Shared {
            generation: AtomicUsize::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            active: AtomicUsize::new(0),
            runs: (0..threads).map(|_| Run(AtomicU64::new(0))).collect(),
            pending: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
        });
        for i in 1..threads {
            let s = shared.clone();
            std::thread::Builder::new()
                .name(format!("llmos-worker-{i}"))
                .spawn(move || worker(s, i))
                .expect("spawning a worker thread");
        }
        Pool {
            threads: AtomicUsize::new(threads),
            spawned: threads - 1,
            shared,
            run: Mutex::new(()),
        }
    }
}

/// Runs thread `me`'s tasks of the job, then the other threads' last tasks until none is
/// left.
fn claim_all(s: &Shared, job: Job, me: usize, active: usize) {
    while let Some(i) = s.runs[me].take(false) {
        job(i);
    }
    for k in (1..active).map(|d| (me + d) % active) {
        while let Some(i) = s.runs[k].take(true) {
            job(i);
        }
    }
}

fn worker(s: Arc<Shared>, index: usize) {
    IN_JOB.with(|f| f.set(true));
    let mut seen = 0usize;
    loop {
        let start = Instant::now();
        let mut spins = 0u32;
        while s.generation.load(Ordering::Acquire) == seen {
            std::hint::spin_loop();
            spins += 1;
            if spins.is_multiple_of(1024) && start.elapsed() > SPIN {
                // announced before the last look at the generation (both sequentially
                // consistent, as the caller's store and its look at `sleepers`): either this
                // look sees the new job or the caller sees a sleeper and notifies, which it
                // can only do once this thread waits (it holds `sleep` until then)
                let mut guard = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
                s.sleepers.fetch_add(1, Ordering::SeqCst);
                while s.generation.load(Ordering::SeqCst) == seen {
                    guard = s.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
                }
                s.sleepers.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let g = s.generation.load(Ordering::Acquire);
        let (job, active) = (
            s.job.load(Ordering::Relaxed),
            s.active.load(Ordering::Relaxed),
        );
        if s.generation.load(Ordering::Acquire) != g {
            continue; // a later job was published meanwhile (this worker sat this one out)
        }
        seen = g;
        if index < active {
            // SAFETY: `job` was published with generation g and this worker takes part in
            // it, so the caller is still waiting in parallel_for for this worker's `pending`
            // decrement and the reference it points at is alive.
            let job: Job = unsafe { *job };
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                claim_all(&s, job, index, active)
            }));
            if r.is_err() {
                s.panicked.store(true, Ordering::Relaxed);
            }
            s.pending.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Runs `f(i)` for every i in 0..n on the pool, the caller included, and returns when all
/// are done. Calls from inside a job run inline.
pub fn parallel_for(n: usize, f: &(dyn Fn(usize) + Sync)) {
    let p = pool();
    if n == 0 {
        return;
    }
    let active = p.threads.load(Ordering::Relaxed);
    if n == 1 || active <= 1 || n > u32::MAX as usize || IN_JOB.with(|c| c.get()) {
        (0..n).for_each(f);
        return;
    }
    let _run = p.run.lock().unwrap_or_else(|e| e.into_inner());
    let s = &*p.shared;
    // SAFETY: the job is only called while this function waits below for every worker to
    // report it finished (`pending` back to 0): a worker reads the published pointer only
    // after seeing this call's generation and calls it only when it takes part, so no use
    // of the reference outlives the borrow it was made from.
    let job: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(f) };
    let g = s.generation.load(Ordering::Relaxed).wrapping_add(1);
    for (j, run) in s.runs[..active].iter().enumerate() {
        let (lo, hi) = (j * n / active, (j + 1) * n / active);
        run.0
            .store(((hi as u64) << 32) | lo as u64, Ordering::Relaxed);
    }
    s.panicked.store(false, Ordering::Relaxed);
    s.pending.store(active - 1, Ordering::Relaxed);
    let slot: Job = job;
    s.job
        .store((&slot as *const Job).cast_mut(), Ordering::Relaxed);
    s.active.store(active, Ordering::Relaxed);
    s.generation.store(g, Ordering::SeqCst);
    if s.sleepers.load(Ordering::SeqCst) > 0 {
        let _guard = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
        s.wake.notify_all();
    }
    IN_JOB.with(|c| c.set(true));
    let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        claim_all(s, job, 0, active)
    }));
    IN_JOB.with(|c| c.set(false));
    while s.pending.load(Ordering::Acquire) != 0 {
        std::hint::spin_loop();
    }
    if let Err(e) = mine {
        std::panic::resume_unwind(e);
    }
    if s.panicked.load(Ordering::Relaxed) {
        panic!("a worker thread panicked in a parallel kernel");
    }
}

/// Runs `f(i, chunk)` for every `chunk`-sized piece of `data` (the last may be shorter), in
/// parallel.
pub fn for_each_chunk_mut<T: Send>(
    data: &mut [T],
    chunk: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    let chunk = chunk.max(1);
    let len = data.len();
    let n = len.div_ceil(chunk);
    let base = SendPtr(data.as_mut_ptr());
    parallel_for(n, &|i| {
        let start = i * chunk;
        let end = (start + chunk).min(len);
        let p = &base;
        // SAFETY: task i gets elements start..end, and the ranges of different tasks are
        // disjoint and inside `data`, which stays mutably borrowed until parallel_for
        // returns; each index i is handed out exactly once.
        let part = unsafe { std::slice::from_raw_parts_mut(p.0.add(start), end - start) };
        f(i, part)
    });
}

/// Columns `cols` of every row of a row-major matrix: one task's share in
/// [`for_each_col_chunk_mut`]. Rows of different tasks' views never overlap.
pub struct ColsMut<'a, T> {
    base: *mut T,
    rows: usize,
    stride: usize,
    cols: std::ops::Range<usize>,
    _borrow: std::marker::PhantomData<&'a mut [T]>,
}

impl<T> ColsMut<'_, T> {
    /// The first column of this view in the whole matrix.
    pub fn first_col(&self) -> usize {
        self.cols.start
    }

    /// Columns in this view.
    pub fn width(&self) -> usize {
        self.cols.len()
    }

    /// This view's part of row `r`.
    pub fn row(&mut self, r: usize) -> &mut [T] {
        assert!(
            r < self.rows,
            "row {r} outside a matrix of {} rows",
            self.rows
        );
        // SAFETY: row r's columns `cols` lie inside the matrix (r < rows, cols.end <=
        // stride, checked in for_each_col_chunk_mut); no other view holds these columns,
        // and `&mut self` keeps this view from handing out two overlapping rows at once.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.base.add(r * self.stride + self.cols.start),
                self.cols.len(),
            )
        }
    }
}

/// Runs `f(i, view)` in parallel for every `chunk`-column piece of a row-major matrix
/// `data` with rows of `stride` elements (the last piece may be narrower): each task
/// writes its columns of every row, e.g. a matmul's output rows for all tokens at once in
/// token-major order, with no transpose afterwards.
pub fn for_each_col_chunk_mut<T: Send>(
    data: &mut [T],
    stride: usize,
    chunk: usize,
    f: impl Fn(usize, ColsMut<'_, T>) + Sync,
) {
    if stride == 0 {
        return;
    }
    assert!(
        data.len().is_multiple_of(stride),
        "for_each_col_chunk_mut: {} elements are not rows of {stride}",
        data.len()
    );
    let chunk = chunk.max(1);
    let rows = data.len() / stride;
    let base = SendPtr(data.as_mut_ptr());
    parallel_for(stride.div_ceil(chunk), &|i| {
        let cols = i * chunk..((i + 1) * chunk).min(stride);
        let p = &base;
        let view = ColsMut {
            base: p.0,
            rows,
            stride,
            cols,
            _borrow: std::marker::PhantomData,
        };
        f(i, view)
    });
}

/// Like [`for_each_chunk_mut`] over K slices at once: task i gets chunk i of every slice
/// (`chunk[k]` elements of slice k; the last may be shorter). Every slice must have the
/// same number of chunks.
pub fn for_each_chunks_mut<T: Send, const K: usize>(
    data: [&mut [T]; K],
    chunk: [usize; K],
    f: impl Fn(usize, [&mut [T]; K]) + Sync,
) {
    let chunk = chunk.map(|c| c.max(1));
    let lens: [usize; K] = std::array::from_fn(|k| data[k].len());
    let n = if K == 0 {
        0
    } else {
        lens[0].div_ceil(chunk[0])
    };
    for k in 0..K {
        assert_eq!(
            lens[k].div_ceil(chunk[k]),
            n,
            "slice {k} has a different number of chunks"
        );
    }
    let bases = data.map(|d| SendPtr(d.as_mut_ptr()));
    parallel_for(n, &|i| {
        let parts: [&mut [T]; K] = std::array::from_fn(|k| {
            let start = (i * chunk[k]).min(lens[k]);
            let end = (start + chunk[k]).min(lens[k]);
            let p = &bases[k];
            // SAFETY: for each slice, task i gets elements start..end; ranges of different
            // tasks are disjoint and inside the slice, which stays mutably borrowed until
            // parallel_for returns; each index i is handed out exactly once.
            unsafe { std::slice::from_raw_parts_mut(p.0.add(start), end - start) }
        });
        f(i, parts)
    });
}

/// [`for_each_chunk_mut`] over K slices in one parallel section: every `chunk[k]`-sized
/// piece of every slice is a task, `f(k, i, piece)` for piece i of slice k. For several
/// small outputs computed from one input (q, k and v of one token), so the threads meet
/// once instead of once per slice.
pub fn for_each_chunk_mut_multi<T: Send, const K: usize>(
    data: [&mut [T]; K],
    chunk: [usize; K],
    f: impl Fn(usize, usize, &mut [T]) + Sync,
) {
    let chunk = chunk.map(|c| c.max(1));
    let lens: [usize; K] = std::array::from_fn(|k| data[k].len());
    let counts: [usize; K] = std::array::from_fn(|k| lens[k].div_ceil(chunk[k]));
    let total: usize = counts.iter().sum();
    let bases = data.map(|d| SendPtr(d.as_mut_ptr()));
    parallel_for(total, &|task| {
        let (k, i) = piece_of(&counts, task);
        let start = i * chunk[k];
        let end = (start + chunk[k]).min(lens[k]);
        let p = &bases[k];
        // SAFETY: task (k, i) gets elements start..end of slice k; the pieces of one slice
        // are disjoint and inside it, the slices are distinct borrows, all stay mutably
        // borrowed until parallel_for returns, and each task is handed out exactly once.
        let part = unsafe { std::slice::from_raw_parts_mut(p.0.add(start), end - start) };
        f(k, i, part)
    });
}

/// [`for_each_col_chunk_mut`] over K row-major matrices in one parallel section: every
/// `chunk[k]`-column piece of matrix k (rows of `stride[k]` elements) is a task,
/// `f(k, i, view)` for piece i of matrix k. For several small matmuls of one input (q, k
/// and v of a batch of sequences), so the threads meet once instead of once per matrix.
pub fn for_each_col_chunk_mut_multi<T: Send, const K: usize>(
    data: [&mut [T]; K],
    stride: [usize; K],
    chunk: [usize; K],
    f: impl Fn(usize, usize, ColsMut<'_, T>) + Sync,
) {
    let chunk = chunk.map(|c| c.max(1));
    for k in 0..K {
        assert!(
            stride[k] > 0 && data[k].len().is_multiple_of(stride[k]),
            "for_each_col_chunk_mut_multi: matrix {k}: {} elements are not rows of {}",
            data[k].len(),
            stride[k]
        );
    }
    let rows: [usize; K] = std::array::from_fn(|k| data[k].len() / stride[k]);
    let counts: [usize; K] = std::array::from_fn(|k| stride[k].div_ceil(chunk[k]));
    let total: usize = counts.iter().sum();
    let bases = data.map(|d| SendPtr(d.as_mut_ptr()));
    parallel_for(total, &|task| {
        let (k, i) = piece_of(&counts, task);
        let p = &bases[k];
        // the view's columns lie inside matrix k; pieces of one matrix are disjoint, the
        // matrices distinct borrows held until parallel_for returns (see ColsMut::row)
        let view = ColsMut {
            base: p.0,
            rows: rows[k],
            stride: stride[k],
            cols: i * chunk[k]..((i + 1) * chunk[k]).min(stride[k]),
            _borrow: std::marker::PhantomData,
        };
        f(k, i, view)
    });
}

/// Task `task` of a section over K slices with `counts[k]` pieces each, numbered slice
/// after slice: (slice, piece).
fn piece_of<const K: usize>(counts: &[usize; K], task: usize) -> (usize, usize) {
    let (mut k, mut i) = (0, task);
    while i >= counts[k] {
        i -= counts[k];
        k += 1;
    }
    (k, i)
}

/// Held by tests that change the pool's thread count, so they do not run into each other.
#[cfg(test)]
pub(crate) static SERIAL: Mutex<()> = Mutex::new(());

struct SendPtr<T>(*mut T);
// SAFETY: the pointer is only used to build disjoint sub-slices (see for_each_chunk_mut).
unsafe impl<T: Send> Sync for SendPtr<T> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_index_runs_once_and_chunks_are_disjoint() {
        let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        init(2);
        for n in [0usize, 1, 2, 7, 100, 1000] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            parallel_for(n, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "n={n}");
        }
        let mut v = vec![0usize; 1003];
        for_each_chunk_mut(&mut v, 10, |ci, part| {
            for (j, x) in part.iter_mut().enumerate() {
                *x += ci * 10 + j + 1;
            }
        });
        assert!(v.iter().enumerate().all(|(i, &x)| x == i + 1));
        let (mut a, mut b) = (vec![0usize; 100], vec![0usize; 25]);
        for_each_chunks_mut([&mut a, &mut b], [8, 2], |ci, [x, y]| {
            x.iter_mut().for_each(|v| *v += ci + 1);
            y.iter_mut().for_each(|v| *v += ci + 1);
        });
        assert!(a.iter().enumerate().all(|(i, &x)| x == i / 8 + 1));
        assert!(b.iter().enumerate().all(|(i, &x)| x == i / 2 + 1));
    }

    #[test]
    fn column_chunks_cover_every_element_once() {
        let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        for th in [1, 2] {
            init(th);
            for (rows, stride, chunk) in
                [(3usize, 10usize, 4usize), (1, 5, 5), (4, 7, 1), (2, 3, 8)]
            {
                let mut m = vec![0u32; rows * stride];
                for_each_col_chunk_mut(&mut m, stride, chunk, |i, mut v| {
                    assert_eq!(v.first_col(), i * chunk);
                    for r in 0..rows {
                        let c0 = v.first_col();
                        for (j, x) in v.row(r).iter_mut().enumerate() {
                            *x += (r * stride + c0 + j) as u32 + 1;
                        }
                    }
                });
                let want: Vec<u32> = (1..=(rows * stride) as u32).collect();
                assert_eq!(m, want, "{rows}x{stride} by {chunk}, {th} threads");
            }
        }
    }

    #[test]
    fn column_chunks_of_several_matrices_cover_each_once() {
        let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        for th in [1, 2] {
            init(th);
            let (mut a, mut b) = (vec![0u32; 3 * 10], vec![0u32; 3 * 7]);
            for_each_col_chunk_mut_multi([&mut a, &mut b], [10, 7], [4, 4], |k, i, mut v| {
                assert_eq!(v.first_col(), i * 4);
                let stride = [10, 7][k];
                for r in 0..3 {
                    let c0 = v.first_col();
                    for (j, x) in v.row(r).iter_mut().enumerate() {
                        *x += (r * stride + c0 + j) as u32 + 1 + 1000 * k as u32;
                    }
                }
            });
            assert_eq!(a, (1..=30).collect::<Vec<u32>>(), "{th} threads");
            assert_eq!(b, (1001..=1021).collect::<Vec<u32>>(), "{th} threads");
        }
    }

    #[test]
    #[should_panic(expected = "not rows of")]
    fn column_chunks_reject_a_ragged_matrix() {
        let mut m = vec![0f32; 7];
        for_each_col_chunk_mut(&mut m, 3, 1, |_, _| {});
    }

    #[test]
    fn an_idle_thread_takes_the_end_of_a_busy_threads_run() {
        let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        init(2);
        // two runs, 0..8 and 8..16: task 0 waits for task 7, the last of its own run, so
        // the job only finishes early if the other thread takes task 7 from that run
        let done = AtomicBool::new(false);
        let t0 = Instant::now();
        parallel_for(16, &|i| {
            if i == 0 {
                while !done.load(Ordering::Acquire) && t0.elapsed() < Duration::from_secs(20) {
                    std::hint::spin_loop();
                }
            }
            if i == 7 {
                done.store(true, Ordering::Release);
            }
        });
        assert!(done.load(Ordering::Relaxed));
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "task 7 was not taken over"
        );
    }

    #[test]
    fn sleeping_workers_wake_for_the_next_job() {
        let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        init(2);
        // pauses around the workers' spin time, so some jobs find them asleep: a lost
        // wake-up would leave the caller waiting for `pending` forever
        for i in 0..24u64 {
            std::thread::sleep(Duration::from_millis(i % 4 * 3));
            let count = AtomicUsize::new(0);
            parallel_for(8, &|_| {
                count.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(count.load(Ordering::Relaxed), 8);
        }
    }

    #[test]
    fn a_panicking_task_reaches_the_caller() {
        let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        init(2);
        let r = std::panic::catch_unwind(|| {
            parallel_for(64, &|i| {
                if i == 40 {
                    panic!("task 40");
                }
            })
        });
        assert!(r.is_err());
        // the pool still works afterwards, with fewer threads too
        init(1);
        parallel_for(3, &|_| {});
        init(2);
        let count = AtomicUsize::new(0);
        parallel_for(10, &|_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 10);
    }
}
