//! BatchNorm followed by ReLU, fused, for the CPU: one custom op for the training-mode
//! forward pass (batch statistics) and one pass for its backward, instead of candle's
//! chain of a dozen element-wise ops with transposed copies.
//!
//! Parameters are named as candle-nn's `BatchNorm` names them (`weight`, `bias`,
//! `running_mean`, `running_var`), so weights are interchangeable. Running statistics
//! follow PyTorch: momentum 0.1, unbiased variance.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor, Var, WithDType};
use candle_nn::{Init, VarBuilder};
use rayon::prelude::*;

use super::Ops;
use crate::Result;

pub(crate) const EPS: f64 = 1e-5;
const MOMENTUM: f64 = 0.1;

/// Per-channel BatchNorm over `(N, C, H, W)` followed by ReLU.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// use protonet::backbone::{BatchNormRelu, Ops};
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
        Ok(Self {
            weight,
            bias,
            running_mean: Var::from_tensor(&running_mean)?,
            running_var: Var::from_tensor(&running_var)?,
            ops,
        })
    }

    /// `relu(batchnorm(x))`: batch statistics (and a running-statistics update) when
    /// `train`, running statistics otherwise.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let c = x.dim(1)?;
        if !train {
            let scale = (self.weight.detach() / (self.running_var.as_tensor() + EPS)?.sqrt()?)?;
            let shift = (self.bias.detach() - (self.running_mean.as_tensor() * &scale)?)?;
            let shape = (1, c, 1, 1);
            let y = x.broadcast_mul(&scale.reshape(shape)?)?.broadcast_add(&shift.reshape(shape)?)?;
            return Ok(y.relu()?);
        }
        if self.ops == Ops::Plain || !x.device().is_cpu() {
            return self.forward_train_plain(x);
        }
        let stats = Arc::new(Mutex::new(None));
        let op = BnReluTrain { stats: stats.clone() };
        let y = x.contiguous()?.apply_op3(&self.weight, &self.bias, op)?;
        let (mean, var) = stats.lock().expect("stats lock").clone().expect("forward ran");
        self.update_running_from(x, mean, var)?;
        Ok(y)
    }

    /// `maxpool2x2(relu(batchnorm(x)))`, the tail of a Conv-4 block, as one fused
    /// operation on the CPU with [`Ops::Fast`] (see the `fused` module): the same values
    /// and gradients as [`BatchNormRelu::forward`] followed by [`super::max_pool2x2`], with
    /// a fraction of the memory traffic. Elsewhere it is that composition.
    pub fn forward_pool(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if self.ops == Ops::Plain || !x.device().is_cpu() || x.rank() != 4 || x.dim(2)? < 2 || x.dim(3)? < 2 {
            return super::max_pool2x2(&self.forward(x, train)?);
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
            return Ok(x.apply_op1(super::fused::AffineReluPool { scale, shift })?);
        }
        let stats = Arc::new(Mutex::new(None));
        let op = super::fused::BnReluPoolTrain { stats: stats.clone() };
        let y = x.apply_op3(&self.weight, &self.bias, op)?;
        let (mean, var) = {
            let saved = stats.lock().expect("stats lock");
            let (mean, var, _) = saved.as_ref().expect("forward ran");
            (mean.clone(), var.clone())
        };
        self.update_running_from(&x, mean, var)?;
        Ok(y)
    }

    /// Updates the running statistics from the batch statistics of `x` computed by a
    /// fused op.
    fn update_running_from(&self, x: &Tensor, mean: Vec<f64>, var: Vec<f64>) -> Result<()> {
        let c = mean.len();
        let n = (x.elem_count() / c) as f64;
        let dev = x.device();
        let mean = Tensor::from_vec(mean, c, dev)?.to_dtype(x.dtype())?;
        let var = Tensor::from_vec(var, c, dev)?.to_dtype(x.dtype())?;
        self.update_running(&mean, &var, n)
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
    fn forward_train_plain(&self, x: &Tensor) -> Result<Tensor> {
        let c = x.dim(1)?;
        let shape = (1, c, 1, 1);
        let n = (x.elem_count() / c) as f64;
        let xt = x.transpose(0, 1)?.flatten_from(1)?; // (C, N*H*W)
        let mean = xt.mean_keepdim(1)?;
        let centred = xt.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(1)?;
        self.update_running(&mean.flatten_all()?, &var.flatten_all()?, n)?;
        let mean = mean.reshape(shape)?;
        let inv_std = (var + EPS)?.sqrt()?.recip()?.reshape(shape)?;
        let xhat = x.broadcast_sub(&mean)?.broadcast_mul(&inv_std)?;
        let y = xhat.broadcast_mul(&self.weight.reshape(shape)?)?.broadcast_add(&self.bias.reshape(shape)?)?;
        Ok(y.relu()?)
    }
}

/// Training-mode forward: `(x, gamma, beta) -> relu(gamma * xhat + beta)`. Leaves the
/// batch mean and (biased) variance in `stats` for the running-statistics update and for
/// the backward pass.
struct BnReluTrain {
    stats: Arc<Mutex<Option<(Vec<f64>, Vec<f64>)>>>,
}

fn dims(l: &Layout) -> candle_core::Result<(usize, usize, usize)> {
    let d = l.dims();
    if d.len() < 2 {
        candle_core::bail!("batch-norm: input needs at least 2 dimensions, got {:?}", d);
    }
    Ok((d[0], d[1], d[2..].iter().product()))
}

fn contiguous<'a, T>(s: &'a [T], l: &Layout) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s[a..b]),
        None => candle_core::bail!("batch-norm: inputs must be contiguous"),
    }
}

/// Mean and biased variance of channel `c` (two passes, f64 accumulation in 8 lanes so
/// that the additions do not wait on each other).
pub(crate) fn channel_stats<T: WithDType>(x: &[T], (n, c, hw): (usize, usize, usize), ch: usize) -> (f64, f64) {
    let mut sum = 0.0;
    for i in 0..n {
        sum += lane_sum(&x[(i * c + ch) * hw..][..hw], |v| v);
    }
    let mean = sum / (n * hw) as f64;
    let mut sq = 0.0;
    for i in 0..n {
        sq += lane_sum(&x[(i * c + ch) * hw..][..hw], |v| (v - mean) * (v - mean));
    }
    (mean, sq / (n * hw) as f64)
}

/// `sum(f(v))` over `s` in f64, in 8 independent lanes.
#[inline]
fn lane_sum<T: WithDType>(s: &[T], f: impl Fn(f64) -> f64) -> f64 {
    let mut acc = [0f64; 8];
    let chunks = s.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for k in 0..8 {
            acc[k] += f(c[k].to_f64());
        }
    }
    acc.iter().sum::<f64>() + rest.iter().map(|v| f(v.to_f64())).sum::<f64>()
}

/// Writes `f(channel, plane)` into every `(n, channel)` plane of `out`, channels in parallel.
pub(crate) fn per_channel_planes<T: WithDType + Send + Sync>(out: &mut [T], (n, c, hw): (usize, usize, usize), f: impl Fn(usize, usize, &mut [T]) + Sync) {
    // Planes of one channel are strided by C*HW; hand each thread whole channels through
    // raw parts of disjoint planes.
    let ptr = SendPtr(out.as_mut_ptr());
    (0..c).into_par_iter().for_each(|ch| {
        let ptr = &ptr;
        for i in 0..n {
            // SAFETY: plane (i, ch) is touched by this channel's task only.
            let plane = unsafe { std::slice::from_raw_parts_mut(ptr.0.add((i * c + ch) * hw), hw) };
            f(ch, i, plane);
        }
    });
}

struct SendPtr<T>(*mut T);
unsafe impl<T> Sync for SendPtr<T> {}
unsafe impl<T> Send for SendPtr<T> {}

fn fwd<T: WithDType + Send + Sync>(x: &[T], gamma: &[T], beta: &[T], d: (usize, usize, usize)) -> (Vec<T>, Vec<f64>, Vec<f64>) {
    let (_, c, hw) = d;
    let stats: Vec<(f64, f64)> = (0..c).into_par_iter().map(|ch| channel_stats(x, d, ch)).collect();
    let mut y = vec![T::zero(); x.len()];
    per_channel_planes(&mut y, d, |ch, i, plane| {
        let (mean, var) = stats[ch];
        let inv = 1.0 / (var + EPS).sqrt();
        let scale = gamma[ch].to_f64() * inv;
        let shift = beta[ch].to_f64() - mean * scale;
        let (s, b) = (T::from_f64(scale), T::from_f64(shift));
        let src = &x[(i * c + ch) * hw..][..hw];
        for (o, &v) in plane.iter_mut().zip(src) {
            let z = v * s + b;
            // NaN passes through (as in PyTorch), so a blown-up network shows in the loss.
            *o = if z > T::zero() || z != z { z } else { T::zero() };
        }
    });
    let mean = stats.iter().map(|s| s.0).collect();
    let var = stats.iter().map(|s| s.1).collect();
    (y, mean, var)
}

impl CustomOp3 for BnReluTrain {
    fn name(&self) -> &'static str {
        "protonet-batchnorm-relu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = dims(l1)?;
        if l2.dims() != [d.1] || l3.dims() != [d.1] {
            candle_core::bail!("batch-norm: weight and bias need {} values", d.1);
        }
        let (out, mean, var) = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(g), CpuStorage::F32(b)) => {
                let (y, m, v) = fwd(contiguous(x, l1)?, contiguous(g, l2)?, contiguous(b, l3)?, d);
                (CpuStorage::F32(y), m, v)
            }
            (CpuStorage::F64(x), CpuStorage::F64(g), CpuStorage::F64(b)) => {
                let (y, m, v) = fwd(contiguous(x, l1)?, contiguous(g, l2)?, contiguous(b, l3)?, d);
                (CpuStorage::F64(y), m, v)
            }
            _ => candle_core::bail!("batch-norm: only f32 and f64 of one dtype"),
        };
        *self.stats.lock().expect("stats lock") = Some((mean, var));
        Ok((out, l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, gamma: &Tensor, _beta: &Tensor, y: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        // One op returns [dx | dgamma | dbeta] flattened; split it here.
        let stats = self.stats.lock().expect("stats lock").clone();
        let packed = x.apply_op3_no_bwd(&grad, &Tensor::cat(&[gamma.flatten_all()?, y.flatten_all()?], 0)?, &BnReluBackward { stats })?;
        let (len, c) = (x.elem_count(), gamma.elem_count());
        let dx = packed.narrow(0, 0, len)?.reshape(x.shape())?;
        let dgamma = packed.narrow(0, len, c)?;
        let dbeta = packed.narrow(0, len + c, c)?;
        Ok((x.track_op().then_some(dx), Some(dgamma), Some(dbeta)))
    }
}

/// Backward of [`BnReluTrain`]: `(x, dy, [gamma | y]) -> [dx | dgamma | dbeta]`, with
/// the forward pass's batch statistics when it has them (else recomputed from `x`).
struct BnReluBackward {
    stats: Option<(Vec<f64>, Vec<f64>)>,
}

#[allow(clippy::type_complexity)]
fn bwd<T: WithDType + Send + Sync>(x: &[T], dy: &[T], gamma: &[T], y: &[T], d: (usize, usize, usize), stats: &Option<(Vec<f64>, Vec<f64>)>) -> Vec<T> {
    let (n, c, hw) = d;
    let m = (n * hw) as f64;
    // Per channel: mean, inv_std, sum(dz), sum(dz * xhat), where dz = dy masked by ReLU.
    let per: Vec<(f64, f64, f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let (mean, var) = match stats {
                Some((m, v)) if m.len() == c && v.len() == c => (m[ch], v[ch]),
                _ => channel_stats(x, d, ch),
            };
            let inv = 1.0 / (var + EPS).sqrt();
            let (mut sdz, mut sdzx) = (0.0, 0.0);
            for i in 0..n {
                let o = (i * c + ch) * hw;
                for j in o..o + hw {
                    if y[j] > T::zero() {
                        let dz = dy[j].to_f64();
                        sdz += dz;
                        sdzx += dz * (x[j].to_f64() - mean) * inv;
                    }
                }
            }
            (mean, inv, sdz, sdzx)
        })
        .collect();
    let mut out = vec![T::zero(); x.len() + 2 * c];
    let (dx, rest) = out.split_at_mut(x.len());
    per_channel_planes(dx, d, |ch, i, plane| {
        let (mean, inv, sdz, sdzx) = per[ch];
        let k = gamma[ch].to_f64() * inv;
        let o = (i * c + ch) * hw;
        for (j, p) in plane.iter_mut().enumerate() {
            let dz = if y[o + j] > T::zero() { dy[o + j].to_f64() } else { 0.0 };
            let xhat = (x[o + j].to_f64() - mean) * inv;
            *p = T::from_f64(k * (dz - sdz / m - xhat * sdzx / m));
        }
    });
    for ch in 0..c {
        rest[ch] = T::from_f64(per[ch].3);
        rest[c + ch] = T::from_f64(per[ch].2);
    }
    out
}

impl CustomOp3 for BnReluBackward {
    fn name(&self) -> &'static str {
        "protonet-batchnorm-relu-backward"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = dims(l1)?;
        let len = l1.shape().elem_count();
        if l2.shape().elem_count() != len || l3.shape().elem_count() != d.1 + len {
            candle_core::bail!("batch-norm backward: mismatched shapes");
        }
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(dy), CpuStorage::F32(gy)) => {
                let gy = contiguous(gy, l3)?;
                CpuStorage::F32(bwd(contiguous(x, l1)?, contiguous(dy, l2)?, &gy[..d.1], &gy[d.1..], d, &self.stats))
            }
            (CpuStorage::F64(x), CpuStorage::F64(dy), CpuStorage::F64(gy)) => {
                let gy = contiguous(gy, l3)?;
                CpuStorage::F64(bwd(contiguous(x, l1)?, contiguous(dy, l2)?, &gy[..d.1], &gy[d.1..], d, &self.stats))
            }
            _ => candle_core::bail!("batch-norm backward: only f32 and f64 of one dtype"),
        };
        Ok((out, Shape::from(len + 2 * d.1)))
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
                let yu = super::super::max_pool2x2(&unfused.forward(x.as_tensor(), train).unwrap()).unwrap();
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
}
