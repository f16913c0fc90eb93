//! Where a forward pass spends its wall time, phase by phase: the matrix products apart from
//! attention and from the work between them, which the calling thread mostly does alone
//! while the pool's other threads wait. Off unless [`enable`]d (then one relaxed load per
//! phase boundary); the totals are the process's, summed over every forward pass since
//! [`reset`]. `batch_step` prints them for a step of several sequences.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// A part of the forward pass. Matrix phases include quantizing their activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Token embeddings, the step's bookkeeping, residual adds, the logits' buffer.
    Other,
    /// RMSNorms before attention (q and k norms included), before the feed-forward block
    /// and before the head (Gemma-3's norms after attention and feed-forward count as other).
    Norms,
    /// The q, k and v products.
    Qkv,
    /// RoPE, f16 rounding of q, k and v, appending k and v to the caches.
    Rope,
    /// Scores, softmax and weighted sums over the cached positions.
    Attention,
    /// The attention output product.
    Output,
    /// The gate and up products.
    GateUp,
    /// SwiGLU / GeGLU.
    Activation,
    /// The down product.
    Down,
    /// The vocabulary head.
    Head,
}

/// Every phase, in the order [`totals`] reports them.
pub const PHASES: [Phase; 10] = [
    Phase::Other,
    Phase::Norms,
    Phase::Qkv,
    Phase::Rope,
    Phase::Attention,
    Phase::Output,
    Phase::GateUp,
    Phase::Activation,
    Phase::Down,
    Phase::Head,
];

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Other => "other",
            Phase::Norms => "norms",
            Phase::Qkv => "q/k/v",
            Phase::Rope => "rope+cache",
            Phase::Attention => "attention",
            Phase::Output => "attn out",
            Phase::GateUp => "gate/up",
            Phase::Activation => "swiglu",
            Phase::Down => "down",
            Phase::Head => "head",
        }
    }
}

static ON: AtomicBool = AtomicBool::new(false);
static NANOS: [AtomicU64; PHASES.len()] = [const { AtomicU64::new(0) }; PHASES.len()];

/// Turns the stopwatch on or off for every later forward pass.
pub fn enable(on: bool) {
    ON.store(on, Ordering::Relaxed);
}

/// Zeroes the totals.
pub fn reset() {
    NANOS.iter().for_each(|n| n.store(0, Ordering::Relaxed));
}

/// Nanoseconds of each phase since the last [`reset`], in [`PHASES`] order.
pub fn totals() -> [(Phase, u64); PHASES.len()] {
    std::array::from_fn(|i| (PHASES[i], NANOS[i].load(Ordering::Relaxed)))
}

/// Charges the time since the previous lap to a phase (nothing when profiling is off).
pub(crate) struct Laps(Option<Instant>);

impl Laps {
    pub(crate) fn start() -> Laps {
        Laps(ON.load(Ordering::Relaxed).then(Instant::now))
    }

    #[inline]
    pub(crate) fn lap(&mut self, p: Phase) {
        if let Some(t) = &mut self.0 {
            let now = Instant::now();
            NANOS[p as usize].fetch_add((now - *t).as_nanos() as u64, Ordering::Relaxed);
            *t = now;
        }
    }
}
