//! The BatchNorm + ReLU layer (optionally followed by a 2x2 max-pool), running on the
//! fused kernels of [`crate::ops`] on the CPU and on candle's ops elsewhere.
//!
//! Parameters are named as candle-nn's `BatchNorm` names them (`weight`, `bias`,
//! `running_mean`, `running_var`), so weights are interchangeable. Running statistics
//! follow PyTorch: momentum 0.1, unbiased variance.

use std::sync::{Arc, Mutex};

use candle_core::{Tensor, Var};
use candle_nn::{Init, VarBuilder};

use crate::error::Result;
use crate::ops::batchnorm::{BnReluTrain, EPS};
use crate::ops::block::ConvBnReluPoolTrain;
use crate::ops::fused::{AffineReluPool, BnReluPoolTrain};
use crate::ops::{max_pool2x2, max_pool2x2_portable, Ops};

const MOMENTUM: f64 = 0.1;

/// Per-channel BatchNorm over `(N, C, H, W)` followed by ReLU.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// use protonet::backbone::BatchNormRelu;
/// use protonet::ops::Ops;
/// let vm = VarMap::new();
/// let bn = BatchNormRelu::new(3, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu), Ops::Fast)?;
/// let x = Tensor::randn(0f32, 1., (4, 3, 5, 5), &Device::Cpu)?;
/// let y = bn.forward(&x, true)?;
/// assert!(y.min_all()?.to_scalar::<f32>()? >= 0.0);
/// # Ok::<(), protonet::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct BatchNormRelu {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    ops: Ops,
}

impl BatchNormRelu {
    /// Creates (or loads) the parameters of a BatchNorm over `channels` channels.
    pub fn new(channels: usize, vb: VarBuilder, ops: Ops) -> Result<Self> {
        let running_mean = vb.get_with_hints(channels, "running_mean", Init::Const(0.))?;
        let running_var = vb.get_with_hints(channels, "running_var", Init::Const(1.))?;
        let weight = vb.get_with_hints(channels, "weight", Init::Const(1.))?;
        let bias = vb.get_with_hints(channels, "bias", Init::Const(0.))?;
        Ok(Self { weight, bias, running_mean: Var::from_tensor(&running_mean)?, running_var: Var::from_tensor(&running_var)?, ops })
    }

    /// `relu(batchnorm(x))`: batch statistics (and a running-statistics update) when
    /// `train`, running statistics otherwise.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let c = x.dim(1)?;
        if !train {
            let (scale, shift) = self.running_affine()?;
            let shape = (1, c, 1, 1);
            let y = x.broadcast_mul(&scale.reshape(shape)?)?.broadcast_add(&shift.reshape(shape)?)?;
            return Ok(y.relu()?);
        }
        if self.ops.on(x.device()) != Ops::Fast {
            return self.forward_train_plain(x, true);
        }
        let stats = Arc::new(Mutex::new(None));
        let op = BnReluTrain { stats: stats.clone() };
        let y = x.contiguous()?.apply_op3(&self.weight, &self.bias, op)?;
        let (mean, var) = stats.lock().expect("stats lock").clone().expect("forward ran");
        self.update_running_from(x.elem_count() / c, x, mean, var)?;
        Ok(y)
    }

    /// `relu(batchnorm(x))` with the batch's own statistics, leaving the running
    /// statistics as they are: for a module whose test-time batches are episodes (the
    /// Relation Network's relation module, whose reference code never switches to
    /// evaluation mode).
    pub fn forward_batch_statistics(&self, x: &Tensor) -> Result<Tensor> {
        if self.ops.on(x.device()) != Ops::Fast {
            return self.forward_train_plain(x, false);
        }
        let op = BnReluTrain { stats: Arc::new(Mutex::new(None)) };
        Ok(x.contiguous()?.apply_op3(&self.weight, &self.bias, op)?)
    }

    /// Evaluation mode's per-channel scale and shift, from the running statistics:
    /// `relu(batchnorm(x)) = relu(x * scale + shift)`. They are constants (no gradient
    /// reaches the BatchNorm parameters in evaluation mode), so that a convolution before
    /// it can take the scale into its kernel.
    ///
    /// ```
    /// use candle_core::{DType, Device};
    /// use candle_nn::{VarBuilder, VarMap};
    /// use protonet::backbone::BatchNormRelu;
    /// use protonet::ops::Ops;
    /// let vm = VarMap::new();
    /// let bn = BatchNormRelu::new(3, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu), Ops::Fast)?;
    /// let (scale, shift) = bn.running_affine()?;
    /// assert!((scale.to_vec1::<f32>()?[0] - 1.0).abs() < 1e-4 && shift.to_vec1::<f32>()?[0] == 0.0);
    /// # Ok::<(), protonet::Error>(())
    /// ```
    pub fn running_affine(&self) -> Result<(Tensor, Tensor)> {
        let scale = (self.weight.detach() / (self.running_var.as_tensor() + EPS)?.sqrt()?)?;
        let shift = (self.bias.detach() - (self.running_mean.as_tensor() * &scale)?)?;
        Ok((scale, shift))
    }

    /// `maxpool2x2(relu(batchnorm(x)))`, the tail of a Conv-4 block, as one fused
    /// operation on the CPU with [`Ops::Fast`] (see the `fused` module): the same values
    /// and gradients as [`BatchNormRelu::forward`] followed by [`crate::ops::max_pool2x2`], with
    /// a fraction of the memory traffic. Elsewhere it is that composition.
    pub fn forward_pool(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if self.ops.on(x.device()) == Ops::Portable {
            return max_pool2x2_portable(&self.forward(x, train)?);
        }
        if self.ops == Ops::Plain || x.rank() != 4 || x.dim(2)? < 2 || x.dim(3)? < 2 {
            return max_pool2x2(&self.forward(x, train)?);
        }
        let c = x.dim(1)?;
        let x = x.contiguous()?;
        if !train {
            let var = self.running_var.as_tensor().to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
            let mean = self.running_mean.as_tensor().to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
            let gamma = self.weight.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
            let beta = self.bias.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
            let scale: Vec<f64> = (0..c).map(|i| gamma[i] / (var[i] + EPS).sqrt()).collect();
            let shift: Vec<f64> = (0..c).map(|i| beta[i] - mean[i] * scale[i]).collect();
            return Ok(x.apply_op1(AffineReluPool { scale, shift })?);
        }
        let stats = Arc::new(Mutex::new(None));
        let op = BnReluPoolTrain { stats: stats.clone() };
        let y = x.apply_op3(&self.weight, &self.bias, op)?;
        let (mean, var) = {
            let saved = stats.lock().expect("stats lock");
            let saved = saved.as_ref().expect("forward ran");
            (saved.mean.clone(), saved.var.clone())
        };
        self.update_running_from(x.elem_count() / c, &x, mean, var)?;
        Ok(y)
    }

    /// `maxpool2x2(relu(batchnorm(conv2d(x, w))))` with batch statistics (stride 1,
    /// `padding`), the training-mode Conv-4 block, as one op on the CPU
    /// (`ops::block`): the same values and gradients as [`crate::ops::conv2d`] followed by
    /// [`BatchNormRelu::forward_pool`], without the full-size convolution output in
    /// autograd's gradient store. Updates the running statistics.
    pub(crate) fn conv_pool_train(&self, x: &Tensor, w: &Tensor, padding: usize) -> Result<Tensor> {
        let stats = Arc::new(Mutex::new(None));
        let gb = Tensor::cat(&[&self.weight, &self.bias], 0)?;
        let y = x.contiguous()?.apply_op3(&w.contiguous()?, &gb, ConvBnReluPoolTrain::new(padding, stats.clone()))?;
        let (mean, var) = {
            let saved = stats.lock().expect("stats lock");
            let saved = saved.as_ref().expect("forward ran");
            (saved.mean.clone(), saved.var.clone())
        };
        // Values per channel: the convolution's output size.
        let (h, wd) = (x.dim(2)? + 2 * padding + 1 - w.dim(2)?, x.dim(3)? + 2 * padding + 1 - w.dim(3)?);
        self.update_running_from(x.dim(0)? * h * wd, x, mean, var)?;
        Ok(y)
    }

    /// Updates the running statistics from batch statistics over `count` values per
    /// channel computed by a fused op (on `x`'s device and dtype).
    fn update_running_from(&self, count: usize, x: &Tensor, mean: Vec<f64>, var: Vec<f64>) -> Result<()> {
        let c = mean.len();
        let dev = x.device();
        let mean = Tensor::from_vec(mean, c, dev)?.to_dtype(x.dtype())?;
        let var = Tensor::from_vec(var, c, dev)?.to_dtype(x.dtype())?;
        self.update_running(&mean, &var, count as f64)
    }

    fn update_running(&self, mean: &Tensor, var: &Tensor, n: f64) -> Result<()> {
        let rm = ((self.running_mean.as_tensor() * (1.0 - MOMENTUM))? + (mean.detach() * MOMENTUM)?)?;
        let unbiased = (var.detach() * (n / (n - 1.0).max(1.0)))?;
        let rv = ((self.running_var.as_tensor() * (1.0 - MOMENTUM))? + (unbiased * MOMENTUM)?)?;
        self.running_mean.set(&rm)?;
        self.running_var.set(&rv)?;
        Ok(())
    }

    /// Training-mode BatchNorm + ReLU from candle's ops (the reference).
    fn forward_train_plain(&self, x: &Tensor, update: bool) -> Result<Tensor> {
        let c = x.dim(1)?;
        let shape = (1, c, 1, 1);
        let n = (x.elem_count() / c) as f64;
        let xt = x.transpose(0, 1)?.flatten_from(1)?; // (C, N*H*W)
        let mean = xt.mean_keepdim(1)?;
        let centred = xt.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(1)?;
        if update {
            self.update_running(&mean.flatten_all()?, &var.flatten_all()?, n)?;
        }
        let mean = mean.reshape(shape)?;
        let inv_std = (var + EPS)?.sqrt()?.recip()?.reshape(shape)?;
        let xhat = x.broadcast_sub(&mean)?.broadcast_mul(&inv_std)?;
        let y = xhat.broadcast_mul(&self.weight.reshape(shape)?)?.broadcast_add(&self.bias.reshape(shape)?)?;
        Ok(y.relu()?)
    }
}

#[cfg(test)]
mod tests {
    use super::{BatchNormRelu, Ops};
    use candle_core::{DType, Device, Tensor, Var};
    use candle_nn::{VarBuilder, VarMap};

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
    }

    /// The fused op against the plain candle composition: outputs, all three gradients
    /// and the running statistics, on odd shapes and batch 1.
    #[test]
    fn fused_matches_plain_values_gradients_and_running_stats() {
        for dims in [(1, 3, 7, 7), (2, 4, 3, 3), (6, 2, 5, 8), (1, 1, 2, 2), (9, 5, 1, 1)] {
            let x = Var::from_tensor(&Tensor::randn(0f64, 1.5, dims, &Device::Cpu).unwrap().affine(1.0, 0.3).unwrap()).unwrap();
            let (mut vm_f, mut vm_p) = (VarMap::new(), VarMap::new());
            let fast = BatchNormRelu::new(dims.1, VarBuilder::from_varmap(&vm_f, DType::F64, &Device::Cpu), Ops::Fast).unwrap();
            let plain = BatchNormRelu::new(dims.1, VarBuilder::from_varmap(&vm_p, DType::F64, &Device::Cpu), Ops::Plain).unwrap();
            let g = Tensor::randn(1f64, 0.3, dims.1, &Device::Cpu).unwrap();
            let b = Tensor::randn(0f64, 0.3, dims.1, &Device::Cpu).unwrap();
            for vm in [&mut vm_f, &mut vm_p] {
                vm.set_one("weight", &g).unwrap();
                vm.set_one("bias", &b).unwrap();
            }
            let yf = fast.forward(x.as_tensor(), true).unwrap();
            let yp = plain.forward(x.as_tensor(), true).unwrap();
            assert!(max_diff(&yf, &yp) < 1e-10, "{dims:?} values");
            let r = Tensor::randn(0f64, 1.0, dims, &Device::Cpu).unwrap();
            let gf = (&yf * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let gp = (&yp * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let dxf = gf.get(x.as_tensor()).unwrap();
            let dxp = gp.get(x.as_tensor()).unwrap();
            assert!(max_diff(dxf, dxp) < 1e-9, "{dims:?} dx");
            for name in ["weight", "bias"] {
                let (vf, vp) = (vm_f.data().lock().unwrap()[name].clone(), vm_p.data().lock().unwrap()[name].clone());
                assert!(max_diff(gf.get(vf.as_tensor()).unwrap(), gp.get(vp.as_tensor()).unwrap()) < 1e-9, "{dims:?} d{name}");
            }
            for name in ["running_mean", "running_var"] {
                let (vf, vp) = (vm_f.data().lock().unwrap()[name].clone(), vm_p.data().lock().unwrap()[name].clone());
                assert!(max_diff(vf.as_tensor(), vp.as_tensor()) < 1e-12, "{dims:?} {name}");
            }
            // Evaluation mode uses the running statistics and is the same for both.
            assert!(max_diff(&fast.forward(x.as_tensor(), false).unwrap(), &plain.forward(x.as_tensor(), false).unwrap()) < 1e-10);
        }
    }

    /// In f32, as training runs: the fused BatchNorm + ReLU and BatchNorm + ReLU + max-pool
    /// against the GPU path (`Ops::Portable`: candle's ops and the portable pool), values
    /// and the gradients of x, weight and bias, in training and evaluation mode, relative
    /// to the largest value (1e-4; a real bug is of order 1).
    #[test]
    fn f32_values_and_gradients_match_the_portable_ops() {
        let rel = |a: &Tensor, b: &Tensor| max_diff(a, b) / b.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap().max(1e-30);
        for dims in [(1, 3, 7, 7), (4, 8, 14, 14), (6, 2, 5, 8), (2, 3, 28, 28)] {
            for (train, pool) in [(true, false), (true, true), (false, true), (false, false)] {
                let x = Var::from_tensor(&Tensor::randn(0f32, 1.5, dims, &Device::Cpu).unwrap().affine(1.0, -0.2).unwrap()).unwrap();
                let (mut vm_f, mut vm_p) = (VarMap::new(), VarMap::new());
                let fast = BatchNormRelu::new(dims.1, VarBuilder::from_varmap(&vm_f, DType::F32, &Device::Cpu), Ops::Fast).unwrap();
                let port = BatchNormRelu::new(dims.1, VarBuilder::from_varmap(&vm_p, DType::F32, &Device::Cpu), Ops::Portable).unwrap();
                let g = Tensor::randn(1f32, 0.3, dims.1, &Device::Cpu).unwrap();
                let b = Tensor::randn(0f32, 0.3, dims.1, &Device::Cpu).unwrap();
                for vm in [&mut vm_f, &mut vm_p] {
                    vm.set_one("weight", &g).unwrap();
                    vm.set_one("bias", &b).unwrap();
                }
                let run = |bn: &BatchNormRelu| if pool { bn.forward_pool(x.as_tensor(), train).unwrap() } else { bn.forward(x.as_tensor(), train).unwrap() };
                let (yf, yp) = (run(&fast), run(&port));
                let to64 = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
                assert!(rel(&to64(&yf), &to64(&yp)) < 1e-5, "{dims:?} train={train} pool={pool} values");
                let r = Tensor::randn(0f32, 1.0, yf.dims(), &Device::Cpu).unwrap();
                let gf = (&yf * &r).unwrap().sum_all().unwrap().backward().unwrap();
                let gp = (&yp * &r).unwrap().sum_all().unwrap().backward().unwrap();
                let dx = rel(&to64(gf.get(x.as_tensor()).unwrap()), &to64(gp.get(x.as_tensor()).unwrap()));
                assert!(dx < 1e-4, "{dims:?} train={train} pool={pool} dx {dx}");
                if train {
                    for name in ["weight", "bias"] {
                        let (vf, vp) = (vm_f.data().lock().unwrap()[name].clone(), vm_p.data().lock().unwrap()[name].clone());
                        let d = rel(&to64(gf.get(vf.as_tensor()).unwrap()), &to64(gp.get(vp.as_tensor()).unwrap()));
                        assert!(d < 1e-4, "{dims:?} pool={pool} d{name} {d}");
                    }
                }
            }
        }
    }

    /// The fused BatchNorm + ReLU + max-pool against the unfused ops: values, gradients
    /// of x, weight and bias, and running statistics, in training and evaluation mode,
    /// on odd sides, batch 1, and inputs with ties (all-negative windows).
    #[test]
    fn fused_pool_matches_unfused_values_gradients_and_running_stats() {
        for dims in [(1, 3, 7, 7), (2, 4, 3, 3), (6, 2, 5, 8), (1, 1, 2, 2), (3, 5, 4, 6), (2, 3, 28, 28)] {
            for train in [true, false] {
                if !train {
                    // A NaN input gives NaN where its window is pooled, and nowhere else.
                    let mut v = Tensor::randn(0f64, 1.0, dims, &Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
                    v[0] = f64::NAN;
                    let xn = Tensor::from_vec(v, dims, &Device::Cpu).unwrap();
                    let vm = VarMap::new();
                    let bn = BatchNormRelu::new(dims.1, VarBuilder::from_varmap(&vm, DType::F64, &Device::Cpu), Ops::Fast).unwrap();
                    let yf = bn.forward_pool(&xn, false).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
                    assert!(yf[0].is_nan(), "{dims:?}: NaN must pass through");
                    assert_eq!(yf.iter().filter(|v| v.is_nan()).count(), 1);
                }
                let x = Var::from_tensor(&Tensor::randn(0f64, 1.5, dims, &Device::Cpu).unwrap().affine(1.0, -0.2).unwrap()).unwrap();
                let (mut vm_f, mut vm_u) = (VarMap::new(), VarMap::new());
                let fused = BatchNormRelu::new(dims.1, VarBuilder::from_varmap(&vm_f, DType::F64, &Device::Cpu), Ops::Fast).unwrap();
                let unfused = BatchNormRelu::new(dims.1, VarBuilder::from_varmap(&vm_u, DType::F64, &Device::Cpu), Ops::Fast).unwrap();
                let g = Tensor::randn(1f64, 0.3, dims.1, &Device::Cpu).unwrap();
                let b = Tensor::randn(0f64, 0.3, dims.1, &Device::Cpu).unwrap();
                let rm = Tensor::randn(0f64, 0.2, dims.1, &Device::Cpu).unwrap();
                let rv = Tensor::randn(1f64, 0.1, dims.1, &Device::Cpu).unwrap().abs().unwrap();
                for vm in [&mut vm_f, &mut vm_u] {
                    vm.set_one("weight", &g).unwrap();
                    vm.set_one("bias", &b).unwrap();
                }
                fused.running_mean.set(&rm).unwrap();
                fused.running_var.set(&rv).unwrap();
                unfused.running_mean.set(&rm).unwrap();
                unfused.running_var.set(&rv).unwrap();
                let yf = fused.forward_pool(x.as_tensor(), train).unwrap();
                let yu = crate::ops::max_pool2x2(&unfused.forward(x.as_tensor(), train).unwrap()).unwrap();
                assert_eq!(yf.dims(), yu.dims());
                assert!(max_diff(&yf, &yu) < 1e-10, "{dims:?} train={train} values");
                let r = Tensor::randn(0f64, 1.0, yf.dims(), &Device::Cpu).unwrap();
                let gf = (&yf * &r).unwrap().sum_all().unwrap().backward().unwrap();
                let gu = (&yu * &r).unwrap().sum_all().unwrap().backward().unwrap();
                assert!(max_diff(gf.get(x.as_tensor()).unwrap(), gu.get(x.as_tensor()).unwrap()) < 1e-9, "{dims:?} train={train} dx");
                if train {
                    for name in ["weight", "bias"] {
                        let (vf, vu) = (vm_f.data().lock().unwrap()[name].clone(), vm_u.data().lock().unwrap()[name].clone());
                        assert!(max_diff(gf.get(vf.as_tensor()).unwrap(), gu.get(vu.as_tensor()).unwrap()) < 1e-9, "{dims:?} d{name}");
                    }
                }
                assert!(max_diff(fused.running_mean.as_tensor(), unfused.running_mean.as_tensor()) < 1e-12);
                assert!(max_diff(fused.running_var.as_tensor(), unfused.running_var.as_tensor()) < 1e-12);
            }
        }
    }

    /// The plain path against candle-nn's BatchNorm followed by ReLU.
    #[test]
    fn plain_matches_candle_nn_batchnorm() {
        use candle_nn::ModuleT;
        let x = Tensor::randn(0f32, 1.0, (5, 3, 4, 4), &Device::Cpu).unwrap();
        let vm = VarMap::new();
        let ours = BatchNormRelu::new(3, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu), Ops::Plain).unwrap();
        let vm2 = VarMap::new();
        let theirs = candle_nn::batch_norm(3, 1e-5, VarBuilder::from_varmap(&vm2, DType::F32, &Device::Cpu)).unwrap();
        let a = ours.forward(&x, true).unwrap();
        let b = theirs.forward_t(&x, true).unwrap().relu().unwrap();
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-5, "{d}");
        let rm = |vm: &VarMap| vm.data().lock().unwrap()["running_var"].as_tensor().to_vec1::<f32>().unwrap();
        for (p, q) in rm(&vm).iter().zip(rm(&vm2)) {
            assert!((p - q).abs() < 1e-5);
        }
    }

    /// The training-mode block as one op (`conv_pool_train`) against the convolution
    /// followed by the fused BatchNorm + ReLU + pool: values, the gradients of input,
    /// kernel, weight and bias, and the running statistics, in f64, through im2col
    /// (3 channels) and Winograd (16), on odd sides and batch 1, with padding 1 and 0.
    #[test]
    fn the_block_op_matches_the_convolution_then_the_fused_tail() {
        for &(n, c, h, w, cout, pad) in &[(3, 3, 9, 7, 4, 1), (1, 16, 7, 7, 5, 1), (4, 16, 14, 14, 16, 1), (2, 3, 8, 9, 2, 0)] {
            let dev = Device::Cpu;
            let x = Var::from_tensor(&Tensor::randn(0.2f64, 1.0, (n, c, h, w), &dev).unwrap()).unwrap();
            let k = Var::from_tensor(&Tensor::randn(0f64, 0.3, (cout, c, 3, 3), &dev).unwrap()).unwrap();
            let (mut vm_b, mut vm_u) = (VarMap::new(), VarMap::new());
            let block = BatchNormRelu::new(cout, VarBuilder::from_varmap(&vm_b, DType::F64, &dev), Ops::Fast).unwrap();
            let tail = BatchNormRelu::new(cout, VarBuilder::from_varmap(&vm_u, DType::F64, &dev), Ops::Fast).unwrap();
            let g = Tensor::randn(1f64, 0.3, cout, &dev).unwrap();
            let b = Tensor::randn(0f64, 0.3, cout, &dev).unwrap();
            for vm in [&mut vm_b, &mut vm_u] {
                vm.set_one("weight", &g).unwrap();
                vm.set_one("bias", &b).unwrap();
            }
            let yb = block.conv_pool_train(x.as_tensor(), k.as_tensor(), pad).unwrap();
            let yu = tail.forward_pool(&crate::ops::conv2d(x.as_tensor(), k.as_tensor(), pad).unwrap(), true).unwrap();
            let case = format!("{n} {c} {h} {w} {cout} pad {pad}");
            assert_eq!(yb.dims(), yu.dims());
            assert!(max_diff(&yb, &yu) < 1e-12, "values {case}");
            let r = Tensor::randn(0f64, 1.0, yu.dims(), &dev).unwrap();
            let gb = (&yb * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let gu = (&yu * &r).unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&x, &k] {
                assert!(max_diff(gb.get(v.as_tensor()).unwrap(), gu.get(v.as_tensor()).unwrap()) < 1e-10, "gradient {:?} {case}", v.dims());
            }
            for name in ["weight", "bias"] {
                let (vb, vu) = (vm_b.data().lock().unwrap()[name].clone(), vm_u.data().lock().unwrap()[name].clone());
                assert!(max_diff(gb.get(vb.as_tensor()).unwrap(), gu.get(vu.as_tensor()).unwrap()) < 1e-10, "d{name} {case}");
            }
            assert!(max_diff(block.running_mean.as_tensor(), tail.running_mean.as_tensor()) < 1e-12, "running mean {case}");
            assert!(max_diff(block.running_var.as_tensor(), tail.running_var.as_tensor()) < 1e-12, "running variance {case}");
        }
    }
}
