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
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has the features this copy was compiled for.
                    return unsafe { vectorized_avx2($($arg),*) };
                }
            }
            vectorized_body($($arg),*)
        }
    };
}
