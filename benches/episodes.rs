//! Criterion benchmarks of N-way K-shot episodes (the speed issue's workloads):
//! A: training step 60-way 5-shot 5-query, 1x28x28; B: training step 5-way 5-shot
//! 15-query, 3x84x84; C1/C2: inference 5-way 1-shot / 20-way 5-shot, 15 queries, 28x28;
//! D1: embedding a batch of 256 at 1x28x28; D2: a batch of 64 at 3x84x84. With the
//! pretrained weights present (`scripts/fetch-pretrained.sh`, `protonet fetch-weights`):
//! E1: EfficientNet-Lite0 embedding a batch of 32 at 224x224; E2: an EfficientNet-Lite0
//! training step through trunk and head, 5-way 4-shot 6-query at 224x224. F: the support
//! adaptation of a 6-way 4-shot support set of 1280-d embeddings (50 Adam steps of the
//! cosine classifier; what a classifier pays once per change of its support set).
//!
//! `cargo bench` runs them all; `cargo bench -- A` one of them.

use candle_core::Device;
use criterion::{criterion_group, criterion_main, Criterion};
use protonet::bench::{Workload, WorkloadKind};
use protonet::EpisodeSpec;

#[path = "../examples/support/mod.rs"]
mod support;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn spec(way: usize, shot: usize, query: usize) -> EpisodeSpec {
    EpisodeSpec::new(way, shot, query).unwrap()
}

fn episodes(c: &mut Criterion) {
    support::alloc::keep_freed_memory();
    let workloads = [
        ("A train 60w5s5q 1x28", WorkloadKind::TrainStep(spec(60, 5, 5)), 1, 28),
        ("B train 5w5s15q 3x84", WorkloadKind::TrainStep(spec(5, 5, 15)), 3, 84),
        ("C1 infer 5w1s15q 1x28", WorkloadKind::Inference(spec(5, 1, 15)), 1, 28),
        ("C2 infer 20w5s15q 1x28", WorkloadKind::Inference(spec(20, 5, 15)), 1, 28),
        ("D1 embed 256 1x28", WorkloadKind::Embed(256), 1, 28),
        ("D2 embed 64 3x84", WorkloadKind::Embed(64), 3, 84),
    ];
    let mut group = c.benchmark_group("episodes");
    group.sample_size(10);
    for (name, kind, channels, size) in workloads {
        let mut w = Workload::new(kind, channels, size, &Device::Cpu).unwrap();
        group.bench_function(name, |b| b.iter(|| w.run_once().unwrap()));
    }
    // E1 and E2 need the pretrained weights; without them they are left out, saying so.
    match protonet::pretrained::PretrainedWeights::efficientnet_lite0().loadable(protonet::pretrained::CONVERTED_WEIGHTS) {
        Ok(weights) => {
            let net = protonet::FewShotNet::new(Box::new(protonet::backbone::EfficientNetLite0::load(&weights, &Device::Cpu).unwrap()));
            let mut e1 = Workload::frozen(net, WorkloadKind::Embed(32), 224, &Device::Cpu).unwrap();
            group.bench_function("E1 embed 32 EfficientNet-Lite0 3x224", |b| b.iter(|| e1.run_once().unwrap()));
            let mut e2 = Workload::efficientnet_training(&weights, spec(5, 4, 6), 224, &Device::Cpu).unwrap();
            group.bench_function("E2 train 5w4s6q EfficientNet-Lite0 3x224", |b| b.iter(|| e2.run_once().unwrap()));
        }
        Err(e) => eprintln!("E1 and E2 left out: {e}"),
    }
    let support = {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let values: Vec<f32> = (0..24 * 1280).map(|_| rng.random_range(-1.0..1.0)).collect();
        candle_core::Tensor::from_vec(values, (24, 1280), &Device::Cpu).unwrap()
    };
    let adapt = protonet::adapt::SupportAdaptation::default();
    group.bench_function("F adapt 6w4s 1280-d 50 steps", |b| b.iter(|| adapt.fit(&support, &[4; 6]).unwrap()));
    group.finish();
}

criterion_group!(benches, episodes);
criterion_main!(benches);
