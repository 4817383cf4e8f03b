//! Runtime choice of vector instructions for the hand-written kernels. The crate is built
//! for the baseline x86-64 CPU (SSE2) so that it runs everywhere; [`vectorized`] runs a
//! kernel compiled again for AVX2 and FMA when the CPU has them, which doubles the width
//! of every vector operation the compiler generates from the kernel's plain loops.

/// Runs `kernel`, compiled for AVX2 + FMA when this x86-64 CPU has them (elsewhere, and on
/// other architectures, as built). The kernel should be `#[inline(always)]` code without
/// threads inside, so that it is compiled into the AVX2 copy.
#[inline(always)]
pub(crate) fn vectorized<R>(kernel: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<R>(kernel: impl FnOnce() -> R) -> R {
            kernel()
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has the features the copy was compiled for.
            return unsafe { avx2(kernel) };
        }
    }
    kernel()
}
