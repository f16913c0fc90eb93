//! What the kernel timers share.

/// Deterministic pseudo-random values in [-0.5, 0.5] (xorshift32 from `seed`): timers need
/// data that is neither constant nor zero, the same from run to run.
pub fn values(seed: u32) -> impl FnMut() -> f32 {
    let mut s = seed;
    move || {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        (s as f32 / u32::MAX as f32) - 0.5
    }
}
