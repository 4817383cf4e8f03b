//! The CPU kernels give bit-identical values and gradients whatever the number of
//! threads: each parallelises over planes or channels and sums within one thread, so a
//! run on a 2-core machine reproduces one on 64 cores. The convolution is the exception:
//! it splits its weight gradient over images and sums the threads' parts, so that
//! gradient differs in the last bits with the thread count (its tests in
//! `src/ops/conv.rs` hold every layout to a tolerance).

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use protonet::backbone::BatchNormRelu;
use protonet::ops::Ops;
use protonet::ops::{depthwise_conv2d, max_pool2x2};

/// An operation of an input and a parameter.
type Op<'a> = Box<dyn Fn(&Tensor, &Tensor) -> Tensor + Sync + 'a>;

/// Values and input/parameter gradients of `f` at fixed random inputs, as raw f32 vectors.
fn run(threads: usize, f: &(dyn Fn(&Tensor, &Tensor) -> Tensor + Sync), x: &Tensor, w: &Tensor) -> Vec<Vec<f32>> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    pool.install(|| {
        let (xv, wv) = (Var::from_tensor(x).unwrap(), Var::from_tensor(w).unwrap());
        let y = f(xv.as_tensor(), wv.as_tensor());
        // The same weighting of the outputs on every run.
        let r = Tensor::arange(0f32, y.elem_count() as f32, &Device::Cpu).unwrap().reshape(y.dims()).unwrap().sin().unwrap();
        let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        vec![flat(&y), flat(g.get(xv.as_tensor()).unwrap()), g.get(wv.as_tensor()).map(flat).unwrap_or_default()]
    })
}

#[test]
fn kernels_are_bit_identical_on_1_2_and_8_threads() {
    let x = Tensor::randn(0f32, 1.0, (5, 6, 13, 11), &Device::Cpu).unwrap();
    let vm = VarMap::new();
    let bn = BatchNormRelu::new(6, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu), Ops::Fast).unwrap();
    let cases: Vec<(&str, Tensor, Op)> = vec![
        (
            "depthwise 3x3 stride 2",
            Tensor::randn(0f32, 1.0, (6, 1, 3, 3), &Device::Cpu).unwrap(),
            Box::new(|x, w| depthwise_conv2d(x, w, 2, (1, 1, 1, 1)).unwrap()),
        ),
        ("max-pool", Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap(), Box::new(|x, _| max_pool2x2(x).unwrap())),
        ("BatchNorm + ReLU, training", Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap(), Box::new(|x, _| bn.forward(x, true).unwrap())),
        ("BatchNorm + ReLU + max-pool, training", Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap(), Box::new(|x, _| bn.forward_pool(x, true).unwrap())),
    ];
    for (name, w, f) in &cases {
        let one = run(1, f.as_ref(), &x, w);
        for threads in [2, 8] {
            let many = run(threads, f.as_ref(), &x, w);
            for (part, (a, b)) in ["values", "input gradient", "parameter gradient"].iter().zip(one.iter().zip(&many)) {
                assert!(a == b, "{name}: {part} differs between 1 and {threads} threads");
            }
        }
    }
}
