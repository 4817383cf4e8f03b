//! Adam (Kingma & Ba), as in PyTorch, with state that can be saved and restored.

use std::collections::{BTreeMap, HashMap};

use candle_core::{backprop::GradStore, Tensor, Var};

use crate::error::{Error, Result};

/// Adam without weight decay, matching `torch.optim.Adam`:
/// `p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`.
///
/// ```
/// use candle_core::{Device, Var};
/// use protonet::optim::Adam;
/// let x = Var::new(&[1f32, -2.], &Device::Cpu)?;
/// let mut adam = Adam::new(vec![("x".into(), x.clone())], 0.1);
/// for _ in 0..100 {
///     let loss = x.as_tensor().sqr()?.sum_all()?;
///     adam.step(&loss.backward()?)?;
/// }
/// assert!(x.as_tensor().sqr()?.sum_all()?.to_scalar::<f32>()? < 0.1);
/// # Ok::<(), protonet::Error>(())
/// ```
pub struct Adam {
    vars: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    step: usize,
    /// Learning rate.
    pub lr: f64,
    /// First-moment decay (0.9).
    pub beta1: f64,
    /// Second-moment decay (0.999).
    pub beta2: f64,
    /// Denominator epsilon (1e-8).
    pub eps: f64,
    /// Decoupled weight decay (AdamW, Loshchilov & Hutter): each step first multiplies
    /// the parameters by `1 - lr * weight_decay` (0: plain Adam).
    pub weight_decay: f64,
    /// Clip the gradients' global L2 norm (over every variable) to this before each step,
    /// as `torch.nn.utils.clip_grad_norm_` does (`None`: no clipping).
    pub max_grad_norm: Option<f64>,
}

impl Adam {
    /// Adam over the named variables with learning rate `lr`.
    pub fn new(vars: Vec<(String, Var)>, lr: f64) -> Self {
        let m = vars.iter().map(|(_, v)| v.as_tensor().zeros_like().expect("zeros")).collect();
        let v = vars.iter().map(|(_, v)| v.as_tensor().zeros_like().expect("zeros")).collect();
        Self { vars, m, v, step: 0, lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, max_grad_norm: None }
    }

    /// Steps taken so far.
    pub fn steps(&self) -> usize {
        self.step
    }

    /// The global L2 norm of the gradients in `grads` over this optimiser's variables.
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut sum = 0.0;
        for (_, var) in &self.vars {
            if let Some(g) = grads.get(var.as_tensor()) {
                sum += g.to_dtype(candle_core::DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
            }
        }
        Ok(sum.sqrt())
    }

    /// One update from the gradients in `grads` (clipped to `max_grad_norm` first, when
    /// set); variables without a gradient keep their value.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        // PyTorch's clip_grad_norm_: scale by max / (norm + 1e-6) when that is below 1.
        let clip = match self.max_grad_norm {
            Some(max) => (max / (self.grad_norm(grads)? + 1e-6)).min(1.0),
            None => 1.0,
        };
        self.step += 1;
        let t = self.step as i32;
        let step_size = self.lr / (1.0 - self.beta1.powi(t));
        let bias2_sqrt = (1.0 - self.beta2.powi(t)).sqrt();
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else { continue };
            // Gradients can carry the graph they came from; the moments must not, or
            // every step would keep the previous ones (and their graphs) alive.
            let g = if clip < 1.0 { (g.detach() * clip)? } else { g.detach() };
            let m = ((&self.m[i] * self.beta1)? + (&g * (1.0 - self.beta1))?)?;
            let v = ((&self.v[i] * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let denom = ((v.sqrt()? / bias2_sqrt)? + self.eps)?;
            let update = ((&m / &denom)? * step_size)?;
            let p = var.as_tensor().detach();
            let p = if self.weight_decay > 0.0 { (p * (1.0 - self.lr * self.weight_decay))? } else { p };
            var.set(&p.sub(&update)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// The moments as tensors named `adam.m.<var>` and `adam.v.<var>`.
    pub fn state_tensors(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for (i, (name, _)) in self.vars.iter().enumerate() {
            out.insert(format!("adam.m.{name}"), self.m[i].clone());
            out.insert(format!("adam.v.{name}"), self.v[i].clone());
        }
        out
    }

    /// Restores the moments saved by [`Adam::state_tensors`] and the step count.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, step: usize) -> Result<()> {
        for (i, (name, var)) in self.vars.iter().enumerate() {
            for (key, slot) in [(format!("adam.m.{name}"), &mut self.m[i]), (format!("adam.v.{name}"), &mut self.v[i])] {
                let t = tensors.get(&key).ok_or_else(|| Error::param("checkpoint", format!("optimiser state `{key}` is missing")))?;
                if t.dims() != var.dims() {
                    return Err(Error::param("checkpoint", format!("optimiser state `{key}` has shape {:?}, expected {:?}", t.dims(), var.dims())));
                }
                *slot = t.to_device(var.device())?;
            }
        }
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Adam;
    use candle_core::{Device, Var};

    #[test]
    fn matches_the_adam_formula_and_keeps_no_graph() {
        let x = Var::new(&[1f64, -2.0], &Device::Cpu).unwrap();
        let mut adam = Adam::new(vec![("x".into(), x.clone())], 0.1);
        let (mut m, mut v, mut p) = ([0f64; 2], [0f64; 2], [1f64, -2.0]);
        for t in 1..=5 {
            // loss = sum(x^3): gradient 3 x^2.
            let loss = x.as_tensor().powf(3.0).unwrap().sum_all().unwrap();
            adam.step(&loss.backward().unwrap()).unwrap();
            for i in 0..2 {
                let g = 3.0 * p[i] * p[i];
                m[i] = 0.9 * m[i] + 0.1 * g;
                v[i] = 0.999 * v[i] + 0.001 * g * g;
                let mh = m[i] / (1.0 - 0.9f64.powi(t));
                let vh = v[i] / (1.0 - 0.999f64.powi(t));
                p[i] -= 0.1 * mh / (vh.sqrt() + 1e-8);
            }
            let got = x.as_tensor().to_vec1::<f64>().unwrap();
            for i in 0..2 {
                assert!((got[i] - p[i]).abs() < 1e-9, "step {t}: {got:?} vs {p:?}");
            }
            // The moments hold values only: no graph reaching back to earlier steps.
            assert!(adam.state_tensors().values().all(|t| !t.track_op()));
        }
    }

    #[test]
    fn clipping_scales_the_global_gradient_norm_as_pytorch_does() {
        // Two variables; loss = sum(x^3) + sum(y^3): gradients 3 x^2 and 3 y^2.
        let x = Var::new(&[1f64, -2.0], &Device::Cpu).unwrap();
        let y = Var::new(&[0.5f64], &Device::Cpu).unwrap();
        let mut adam = Adam::new(vec![("x".into(), x.clone()), ("y".into(), y.clone())], 0.1);
        adam.max_grad_norm = Some(0.5);
        let (mut m, mut v, mut p) = ([0f64; 3], [0f64; 3], [1f64, -2.0, 0.5]);
        for t in 1..=5 {
            let loss = (x.as_tensor().powf(3.0).unwrap().sum_all().unwrap() + y.as_tensor().powf(3.0).unwrap().sum_all().unwrap()).unwrap();
            let grads = loss.backward().unwrap();
            let g: Vec<f64> = p.iter().map(|q| 3.0 * q * q).collect();
            let norm = g.iter().map(|a| a * a).sum::<f64>().sqrt();
            assert!((adam.grad_norm(&grads).unwrap() - norm).abs() < 1e-9);
            let clip = (0.5 / (norm + 1e-6)).min(1.0);
            adam.step(&grads).unwrap();
            for i in 0..3 {
                let gi = g[i] * clip;
                m[i] = 0.9 * m[i] + 0.1 * gi;
                v[i] = 0.999 * v[i] + 0.001 * gi * gi;
                p[i] -= 0.1 * (m[i] / (1.0 - 0.9f64.powi(t))) / ((v[i] / (1.0 - 0.999f64.powi(t))).sqrt() + 1e-8);
            }
            let got: Vec<f64> = [x.as_tensor().to_vec1::<f64>().unwrap(), y.as_tensor().to_vec1::<f64>().unwrap()].concat();
            for i in 0..3 {
                assert!((got[i] - p[i]).abs() < 1e-9, "step {t}: {got:?} vs {p:?}");
            }
        }
    }
}
