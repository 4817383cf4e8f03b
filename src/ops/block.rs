//! A Conv-4 block in training mode as one op for the CPU: convolution (stride 1), then
//! BatchNorm on the batch's statistics, ReLU and 2x2 max-pool (the `fused` module). One op
//! instead of two keeps the full-size convolution output out of autograd's gradient store:
//! candle adds every gradient into a zero-filled tensor of its node's size, which for the
//! first block of a 60-way episode is a 120 MB fill and a 120 MB addition per step. The
//! convolution output is kept by the op for its backward pass, as the two-op chain kept it
//! as the second op's input.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Device, Layout, Shape, Tensor, WithDType};

use super::conv::{self, ConvGrad, Geometry};
use super::fused::{self, BnReluPoolBackward, Saved};

/// `(x, w, [gamma | beta]) -> maxpool2x2(relu(batchnorm(conv2d(x, w))))` with batch
/// statistics, which it leaves in `stats` (with what the backward pass needs).
pub(crate) struct ConvBnReluPoolTrain {
    pub(crate) padding: usize,
    pub(crate) stats: Arc<Mutex<Option<Saved>>>,
    /// The convolution's output, for the backward pass.
    conv: Mutex<Option<Tensor>>,
}

impl ConvBnReluPoolTrain {
    /// The op for a convolution with `padding`, leaving the batch statistics in `stats`.
    pub(crate) fn new(padding: usize, stats: Arc<Mutex<Option<Saved>>>) -> Self {
        Self { padding, stats, conv: Mutex::new(None) }
    }

    fn run<T: WithDType + Send + Sync>(&self, x: &[T], w: &[T], gb: &[T], g: &Geometry) -> candle_core::Result<Vec<T>> {
        let y = conv::forward(x, w, g, None, None);
        let (pooled, saved) = fused::train_fwd(&y, &gb[..g.cout], &gb[g.cout..], (g.n, g.cout, g.oh, g.ow));
        *self.stats.lock().expect("stats lock") = Some(saved);
        *self.conv.lock().expect("conv lock") = Some(Tensor::from_vec(y, (g.n, g.cout, g.oh, g.ow), &Device::Cpu)?);
        Ok(pooled)
    }
}

impl CustomOp3 for ConvBnReluPoolTrain {
    fn name(&self) -> &'static str {
        "protonet-conv-batchnorm-relu-pool"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = Geometry::new(l1, l2, self.padding, 1)?;
        if l3.dims() != [2 * g.cout] {
            candle_core::bail!("conv-batch-norm: weight and bias need {} values each", g.cout);
        }
        if g.oh < 2 || g.ow < 2 {
            candle_core::bail!("conv-batch-norm: a {}x{} output is too small for a 2x2 pool", g.oh, g.ow);
        }
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(w), CpuStorage::F32(gb)) => {
                CpuStorage::F32(self.run(conv::slice(x, l1, "input")?, conv::slice(w, l2, "kernel")?, conv::slice(gb, l3, "weight")?, &g)?)
            }
            (CpuStorage::F64(x), CpuStorage::F64(w), CpuStorage::F64(gb)) => {
                CpuStorage::F64(self.run(conv::slice(x, l1, "input")?, conv::slice(w, l2, "kernel")?, conv::slice(gb, l3, "weight")?, &g)?)
            }
            _ => candle_core::bail!("conv-batch-norm: only f32 and f64 of one dtype"),
        };
        Ok((out, Shape::from((g.n, g.cout, g.oh / 2, g.ow / 2))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, gb: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let y = match self.conv.lock().expect("conv lock").clone() {
            Some(y) => y,
            None => candle_core::bail!("conv-batch-norm: backward before forward"),
        };
        let len = y.elem_count();
        let packed = y.apply_op3_no_bwd(&grad.contiguous()?, gb, &BnReluPoolBackward { stats: self.stats.clone() })?;
        let dy = packed.narrow(0, 0, len)?.reshape(y.shape())?;
        let (dx, dw) = ConvGrad::both(x, w, &dy, self.padding, 1)?;
        Ok((dx, Some(dw), Some(packed.narrow(0, len, gb.elem_count())?)))
    }
}
