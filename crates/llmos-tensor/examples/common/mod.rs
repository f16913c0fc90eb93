//! What the kernel timers share (each uses part of it).
#![allow(dead_code)]

use std::time::Instant;

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

/// The clock in GHz, timed now (a shared VM's moves from run to run): `adds` dependent
/// integer adds, one per cycle. NaN off x86-64.
pub fn clock_ghz(adds: u64) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        let t = Instant::now();
        // SAFETY: integer register arithmetic only
        unsafe {
            std::arch::asm!("2:", "add {x}, 1", "dec {n}", "jnz 2b", n = inout(reg) adds => _,
                x = inout(reg) 0u64 => _, options(nostack, nomem));
        }
        adds as f64 / t.elapsed().as_secs_f64() / 1e9
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = adds;
        f64::NAN
    }
}
