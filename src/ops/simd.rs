//! Runtime choice of vector instructions for the hand-written kernels. The crate is built
//! for the baseline x86-64 CPU (SSE2) so that it runs everywhere; a kernel declared with
//! `vectorized!` is compiled twice, once more for AVX2 and
//! FMA, and runs that copy when the CPU has them, which doubles the width of every vector
//! operation the compiler generates from the kernel's plain loops.

/// Declares `fn name<T: Bound>(args) -> R { body }` compiled twice: as built, and for
/// AVX2 + FMA, chosen at run time (the choice is a cached flag test). The body is an
/// `#[inline(always)]` function inlined into both copies, so everything it calls that is
/// `#[inline(always)]` is compiled for AVX2 too. The kernel must not start threads.
macro_rules! vectorized {
    ($(#[$meta:meta])* $vis:vis fn $name:ident<$t:ident: $bound:path>($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name<$t: $bound>($($arg: $ty),*) $(-> $ret)? {
            #[allow(clippy::too_many_arguments)]
            #[inline(always)]
            fn vectorized_body<$t: $bound>($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[allow(clippy::too_many_arguments)]
                #[target_feature(enable = "avx2,fma")]
                unsafe fn vectorized_avx2<$t: $bound>($($arg: $ty),*) $(-> $ret)? {
                    vectorized_body($($arg),*)
                }
                if $crate::ops::simd::avx2_allowed() && std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has the features this copy was compiled for.
                    return unsafe { vectorized_avx2($($arg),*) };
                }
            }
            vectorized_body($($arg),*)
        }
    };
}

/// Whether kernels may run their AVX2 copies: always, except while a test holds
/// [`baseline_only`] to check the baseline copies on a machine that has AVX2.
#[inline(always)]
pub(crate) fn avx2_allowed() -> bool {
    !BASELINE_ONLY.load(std::sync::atomic::Ordering::Relaxed)
}

static BASELINE_ONLY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Runs `f` with every kernel on its baseline copy (the one built for any x86-64 CPU), in
/// every thread. For tests: other work running meanwhile also takes the baseline copies,
/// which compute the same values.
#[cfg(test)]
pub(crate) fn baseline_only<R>(f: impl FnOnce() -> R) -> R {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    BASELINE_ONLY.store(true, std::sync::atomic::Ordering::Relaxed);
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    BASELINE_ONLY.store(false, std::sync::atomic::Ordering::Relaxed);
    out.unwrap_or_else(|e| std::panic::resume_unwind(e))
}
