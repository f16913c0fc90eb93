//! What the X8 Q4_1 kernel's instruction mix can reach on this CPU: cycles per iteration of
//! eight independent `vpdpbusd`, eight `vfmadd231ps`, eight `vcvtdq2ps` and their mixes
//! (ymm, no memory operands). llama.cpp's lane order needs, per token, block and eight
//! rows, eight `vpdpbusd` (the lanes' integer sums) and eight FMAs (one per lane
//! accumulator) plus the conversions; where the first two share execution ports, as on
//! Zen 4, the pair costs twice one alone and bounds every batched Q4_1 product.
//! `port_mix [ITERS]`; needs AVX-512 VL and VNNI (ymm16-31 and the ymm form).
//! The clock is measured first with a chain of dependent adds (one per cycle).

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
    macro_rules! looped {
        ($name:ident, $($body:tt)*) => {
            /// # Safety
            /// AVX-512 VL and VNNI.
            #[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512vnni")]
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
                        out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
                        out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _,
                        out("ymm14") _, out("ymm15") _,
                        out("ymm16") _, out("ymm17") _, out("ymm18") _, out("ymm19") _,
                        out("ymm20") _, out("ymm21") _, out("ymm22") _, out("ymm23") _,
                        out("ymm24") _, out("ymm25") _, out("ymm26") _, out("ymm27") _,
                        out("ymm28") _, out("ymm29") _, out("ymm30") _, out("ymm31") _,
                        options(nostack, nomem),
                    );
                }
            }
        };
    }
    looped!(dpbusd, dp8!());
    looped!(fma, fma8!());
    looped!(cvt, cvt8!());
    looped!(dpbusd_fma, concat!(dp8!(), fma8!()));
    looped!(dpbusd_cvt, concat!(dp8!(), cvt8!()));
    looped!(fma_cvt, concat!(fma8!(), cvt8!()));
    looped!(all, concat!(dp8!(), fma8!(), cvt8!()));

    /// A chain of dependent adds: one iteration per cycle.
    pub fn chain(iters: u64) {
        // SAFETY: integer register arithmetic only
        unsafe {
            asm!("2:", "add {x}, 1", "dec {n}", "jnz 2b", n = inout(reg) iters => _,
                 x = inout(reg) 0u64 => _, options(nostack, nomem));
        }
    }
}

fn main() {
    #[cfg(target_arch = "x86_64")]
    {
        if !(is_x86_feature_detected!("avx512vl") && is_x86_feature_detected!("avx512vnni")) {
            eprintln!("port_mix: this CPU lacks AVX-512 VL or VNNI");
            std::process::exit(1);
        }
        let iters: u64 = std::env::args()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(50_000_000);
        let t = Instant::now();
        mix::chain(iters * 4);
        let ghz = (iters * 4) as f64 / t.elapsed().as_secs_f64() / 1e9;
        println!("clock about {ghz:.2} GHz (dependent adds)");
        type Kernel = unsafe fn(u64);
        let runs: [(&str, Kernel); 7] = [
            ("8 vpdpbusd", mix::dpbusd),
            ("8 vfmadd231ps", mix::fma),
            ("8 vcvtdq2ps", mix::cvt),
            ("8 vpdpbusd + 8 fma", mix::dpbusd_fma),
            ("8 vpdpbusd + 8 cvt", mix::dpbusd_cvt),
            ("8 fma + 8 cvt", mix::fma_cvt),
            ("8 vpdpbusd + 8 fma + 8 cvt", mix::all),
        ];
        for (name, f) in runs {
            let t = Instant::now();
            // SAFETY: AVX-512 VL and VNNI checked above
            unsafe { f(iters) };
            let cycles = t.elapsed().as_secs_f64() * ghz * 1e9 / iters as f64;
            println!("{name:<28} {cycles:5.2} cycles per iteration");
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    eprintln!("port_mix: x86-64 only");
}
