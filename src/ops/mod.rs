//! CPU kernels with their own backward passes, as candle custom ops: convolution through
//! GEMMs (Winograd's F(2x2, 3x3) for 3x3 kernels on 16 channels or more, im2col otherwise;
//! with a stride, and with a bias and clamp applied in the same pass, or with a bias,
//! ReLU and 2x2 max-pool), depthwise convolution (likewise), 2x2 max-pool, BatchNorm +
//! ReLU, BatchNorm + ReLU + max-pool fused, a whole Conv-4 block in training mode
//! (convolution, BatchNorm, ReLU, pool), and a per-channel affine map with a clamp. Each
//! is checked against candle's plain ops (values and gradients) in its tests. The
//! hand-written loops are compiled twice, for any x86-64 CPU and for AVX2 + FMA, and the
//! copy is chosen at run time. Kernels know nothing of layers: the layers in
//! [`crate::backbone`] choose between them and candle's ops with [`Ops`].

#[macro_use]
mod simd;
mod affine;
pub(crate) mod batchnorm;
pub(crate) mod block;
mod conv;
mod depthwise;
mod epilogue;
pub(crate) mod fused;
mod pool;
#[cfg(test)]
pub(crate) mod testing;
mod winograd;

pub use affine::{channel_affine, channel_affine_portable};
pub use conv::{conv2d, conv2d_bias, conv2d_bias_portable, conv2d_bias_relu_pool, conv2d_bias_relu_pool_portable};
pub use depthwise::{depthwise_conv2d, depthwise_conv2d_bias, depthwise_conv2d_bias_portable, depthwise_conv2d_portable};
pub use pool::{max_pool2x2, max_pool2x2_portable};

/// Which implementation of the hot operations a layer uses.
///
/// `Fast` (the default) uses this crate's CPU custom ops ([`conv2d`], [`max_pool2x2`]),
/// which also fix candle 0.11's wrong max-pool gradient; on other devices it is
/// `Portable`. `Portable` is what runs on GPUs: candle's convolution and BatchNorm ops
/// and [`max_pool2x2_portable`], all with correct gradients; choosing it on the CPU tests
/// that path without a GPU. `Plain` uses candle's ops everywhere, for comparison: note
/// that its max-pool gradient is wrong (see [`max_pool2x2`]), so do not train with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ops {
    /// This crate's custom ops on the CPU (`Portable` elsewhere).
    #[default]
    Fast,
    /// Ops that exist on every device, with correct gradients.
    Portable,
    /// candle's own ops, max-pool included.
    Plain,
}

impl Ops {
    /// The implementation used on `device`: `Fast` becomes `Portable` off the CPU.
    ///
    /// ```
    /// use protonet::ops::Ops;
    /// assert_eq!(Ops::Fast.on(&candle_core::Device::Cpu), Ops::Fast);
    /// assert_eq!(Ops::Portable.on(&candle_core::Device::Cpu), Ops::Portable);
    /// ```
    pub fn on(self, device: &candle_core::Device) -> Ops {
        match self {
            Ops::Fast if !device.is_cpu() => Ops::Portable,
            other => other,
        }
    }
}
