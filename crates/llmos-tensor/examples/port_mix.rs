//! What the X8 Q4_1 kernel's instruction mix can reach on this CPU: cycles per iteration of
//! eight independent `vpdpbusd`, eight `vfmadd231ps`, eight `vcvtdq2ps` and their mixes
//! (ymm, no memory operands). llama.cpp's lane order needs, per token, block and eight
//! rows, eight `vpdpbusd` (the lanes' integer sums) and eight FMAs (one per lane
//! accumulator) plus the conversions; where the first two share execution ports, as on
//! Zen 4, the pair costs twice one alone and bounds every batched Q4_1 product.
//! `port_mix [ITERS]`. With AVX-512 VL and VNNI (ymm16-31 and the ymm form) it measures
//! those; on a CPU with only AVX2 and FMA it measures AVX2's form of the same work:
//! `vpmaddubsw` then `vpmaddwd` for each four products' sum (on Zen 1 one port does both,
//! and each 256-bit operation is two), the FMAs and conversions, and `vpaddw` (what the
//! block-sum kernel adds pair sums with before its one `vpmaddwd`).
//! The clock is measured before each mix with a chain of dependent adds (one per cycle):
//! on a shared VM it moves between runs.
mod common;

use std::time::Instant;

#[cfg(target_arch = "x86_64")]
mod mix {
    use std::arch::asm;

    /// Eight dpbusd into ymm0-7.
    macro_rules! dp8 {
        () => {
            "vpdpbusd ymm0, ymm14, ymm15\n vpdpbusd ymm1, ymm14, ymm15\n vpdpbusd ymm2, ymm14, ymm15\n vpdpbusd ymm3, ymm14, ymm15\n vpdpbusd ymm4, ymm14, ymm15\n vpdpbusd ymm5, ymm14, ymm15\n vpdpbusd ymm6, ymm14, ymm15\n vpdpbusd ymm7, ymm14, ymm15\n"
        };
    }
    /// Eight FMAs into ymm16-23.
    macro_rules! fma8 {
        () => {
            "vfmadd231ps ymm16, ymm14, ymm15\n vfmadd231ps ymm17, ymm14, ymm15\n vfmadd231ps ymm18, ymm14, ymm15\n vfmadd231ps ymm19, ymm14, ymm15\n vfmadd231ps ymm20, ymm14, ymm15\n vfmadd231ps ymm21, ymm14, ymm15\n vfmadd231ps ymm22, ymm14, ymm15\n vfmadd231ps ymm23, ymm14, ymm15\n"
        };
    }
    /// Eight conversions of ymm0-7 into ymm24-31.
    macro_rules! cvt8 {
        () => {
            "vcvtdq2ps ymm24, ymm0\n vcvtdq2ps ymm25, ymm1\n vcvtdq2ps ymm26, ymm2\n vcvtdq2ps ymm27, ymm3\n vcvtdq2ps ymm28, ymm4\n vcvtdq2ps ymm29, ymm5\n vcvtdq2ps ymm30, ymm6\n vcvtdq2ps ymm31, ymm7\n"
        };
    }
    /// `$name(iters)`: `iters` times the body, with the target features `$features` and the
    /// registers `$regs` declared clobbered (ymm14 and ymm15, the inputs, zeroed first).
    macro_rules! looped_with {
        ($name:ident, $features:literal, [$($regs:tt),*], $($body:tt)*) => {
            /// # Safety
            /// The CPU has the features this function enables.
            #[target_feature(enable = $features)]
            pub unsafe fn $name(iters: u64) {
                // SAFETY: register-only arithmetic on the registers declared clobbered;
                // the caller checked the CPU features
                unsafe {
                    asm!(
                        "vpxor xmm14, xmm14, xmm14",
                        "vpxor xmm15, xmm15, xmm15",
                        "2:",
                        $($body)*,
                        "dec {n}",
                        "jnz 2b",
                        n = inout(reg) iters => _,
                        $(out($regs) _,)*
                        options(nostack, nomem),
                    );
                }
            }
        };
    }
    /// The AVX-512 VNNI mixes: ymm0-7, 14-15 and 16-31.
    macro_rules! looped {
        ($name:ident, $($body:tt)*) => {
            looped_with!($name, "avx2,fma,avx512f,avx512vl,avx512vnni", [
                "ymm0", "ymm1", "ymm2", "ymm3", "ymm4", "ymm5", "ymm6", "ymm7", "ymm14", "ymm15",
                "ymm16", "ymm17", "ymm18", "ymm19", "ymm20", "ymm21", "ymm22", "ymm23",
                "ymm24", "ymm25", "ymm26", "ymm27", "ymm28", "ymm29", "ymm30", "ymm31"
            ], $($body)*);
        };
    }
    /// The AVX2 mixes: all 16 registers.
    macro_rules! looped2 {
        ($name:ident, $($body:tt)*) => {
            looped_with!($name, "avx2,fma", [
                "ymm0", "ymm1", "ymm2", "ymm3", "ymm4", "ymm5", "ymm6", "ymm7",
                "ymm8", "ymm9", "ymm10", "ymm11", "ymm12", "ymm13", "ymm14", "ymm15"
            ], $($body)*);
        };
    }
    looped!(dpbusd, dp8!());
    looped!(fma, fma8!());
    looped!(cvt, cvt8!());
    looped!(dpbusd_fma, concat!(dp8!(), fma8!()));
    looped!(dpbusd_cvt, concat!(dp8!(), cvt8!()));
    looped!(fma_cvt, concat!(fma8!(), cvt8!()));
    looped!(all, concat!(dp8!(), fma8!(), cvt8!()));

    /// AVX2 only (16 registers): the FMAs accumulate into ymm0-7; the other kinds only
    /// write, into ymm8-13 (renamed, so no dependences), from ymm14 and ymm15.
    macro_rules! ub8 {
        () => {
            "vpmaddubsw ymm8, ymm14, ymm15\n vpmaddubsw ymm9, ymm14, ymm15\n vpmaddubsw ymm10, ymm14, ymm15\n vpmaddubsw ymm11, ymm14, ymm15\n vpmaddubsw ymm12, ymm14, ymm15\n vpmaddubsw ymm13, ymm14, ymm15\n vpmaddubsw ymm8, ymm15, ymm14\n vpmaddubsw ymm9, ymm15, ymm14\n"
        };
    }
    macro_rules! wd8 {
        () => {
            "vpmaddwd ymm10, ymm14, ymm15\n vpmaddwd ymm11, ymm14, ymm15\n vpmaddwd ymm12, ymm14, ymm15\n vpmaddwd ymm13, ymm14, ymm15\n vpmaddwd ymm8, ymm15, ymm14\n vpmaddwd ymm9, ymm15, ymm14\n vpmaddwd ymm10, ymm15, ymm14\n vpmaddwd ymm11, ymm15, ymm14\n"
        };
    }
    macro_rules! fma8_avx2 {
        () => {
            "vfmadd231ps ymm0, ymm14, ymm15\n vfmadd231ps ymm1, ymm14, ymm15\n vfmadd231ps ymm2, ymm14, ymm15\n vfmadd231ps ymm3, ymm14, ymm15\n vfmadd231ps ymm4, ymm14, ymm15\n vfmadd231ps ymm5, ymm14, ymm15\n vfmadd231ps ymm6, ymm14, ymm15\n vfmadd231ps ymm7, ymm14, ymm15\n"
        };
    }
    macro_rules! cvt8_avx2 {
        () => {
            "vcvtdq2ps ymm12, ymm14\n vcvtdq2ps ymm13, ymm15\n vcvtdq2ps ymm8, ymm14\n vcvtdq2ps ymm9, ymm15\n vcvtdq2ps ymm10, ymm14\n vcvtdq2ps ymm11, ymm15\n vcvtdq2ps ymm12, ymm15\n vcvtdq2ps ymm13, ymm14\n"
        };
    }
    macro_rules! addw8 {
        () => {
            "vpaddw ymm8, ymm14, ymm15\n vpaddw ymm9, ymm14, ymm15\n vpaddw ymm10, ymm14, ymm15\n vpaddw ymm11, ymm14, ymm15\n vpaddw ymm12, ymm14, ymm15\n vpaddw ymm13, ymm14, ymm15\n vpaddw ymm8, ymm15, ymm14\n vpaddw ymm9, ymm15, ymm14\n"
        };
    }
    looped2!(ub, ub8!());
    looped2!(wd, wd8!());
    looped2!(fma2, fma8_avx2!());
    looped2!(cvt2, cvt8_avx2!());
    looped2!(addw, addw8!());
    looped2!(ub_wd, concat!(ub8!(), wd8!()));
    looped2!(ub_fma, concat!(ub8!(), fma8_avx2!()));
    looped2!(ub_cvt, concat!(ub8!(), cvt8_avx2!()));
    looped2!(ub_addw, concat!(ub8!(), addw8!()));
    looped2!(fma_cvt2, concat!(fma8_avx2!(), cvt8_avx2!()));
    looped2!(lanes2, concat!(ub8!(), wd8!(), fma8_avx2!(), cvt8_avx2!()));
}

fn main() {
    #[cfg(target_arch = "x86_64")]
    {
        type Kernel = unsafe fn(u64);
        let iters: u64 = std::env::args()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(50_000_000);
        let runs: Vec<(&str, Kernel)> =
            if is_x86_feature_detected!("avx512vl") && is_x86_feature_detected!("avx512vnni") {
                vec![
                    ("8 vpdpbusd", mix::dpbusd),
                    ("8 vfmadd231ps", mix::fma),
                    ("8 vcvtdq2ps", mix::cvt),
                    ("8 vpdpbusd + 8 fma", mix::dpbusd_fma),
                    ("8 vpdpbusd + 8 cvt", mix::dpbusd_cvt),
                    ("8 fma + 8 cvt", mix::fma_cvt),
                    ("8 vpdpbusd + 8 fma + 8 cvt", mix::all),
                ]
            } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                println!("no AVX-512 VNNI: the AVX2 forms");
                vec![
                    ("8 vpmaddubsw", mix::ub),
                    ("8 vpmaddwd", mix::wd),
                    ("8 vfmadd231ps", mix::fma2),
                    ("8 vcvtdq2ps", mix::cvt2),
                    ("8 vpaddw", mix::addw),
                    ("8 vpmaddubsw + 8 vpmaddwd", mix::ub_wd),
                    ("8 vpmaddubsw + 8 fma", mix::ub_fma),
                    ("8 vpmaddubsw + 8 cvt", mix::ub_cvt),
                    ("8 vpmaddubsw + 8 vpaddw", mix::ub_addw),
                    ("8 fma + 8 cvt", mix::fma_cvt2),
                    ("8 ubsw + 8 wd + 8 fma + 8 cvt", mix::lanes2),
                ]
            } else {
                eprintln!("port_mix: this CPU lacks AVX2 and FMA");
                std::process::exit(1);
            };
        for (name, f) in runs {
            // the clock just before each mix: a shared VM's moves between runs
            let ghz = common::clock_ghz(iters * 4);
            let t = Instant::now();
            // SAFETY: the features of this list's kernels were checked above
            unsafe { f(iters) };
            let cycles = t.elapsed().as_secs_f64() * ghz * 1e9 / iters as f64;
            println!("{name:<32} {cycles:5.2} cycles per iteration (clock {ghz:.2} GHz)");
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    eprintln!("port_mix: x86-64 only");
}
