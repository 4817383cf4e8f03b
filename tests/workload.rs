//! The benchmark workloads that `protonet bench` and `cargo bench` share.

mod common;

/// `protonet bench --backbone efficientnet-lite0` times the frozen network (and refuses a
/// training step, which a frozen network does not have).
#[test]
fn frozen_backbone_workloads_run_needs_data() {
    use protonet::bench::{time_workload, Workload, WorkloadKind};
    let path = common::pretrained_weights("frozen backbone workloads");
    let net = || protonet::FewShotNet::new(Box::new(protonet::backbone::EfficientNetLite0::load(&path, &candle_core::Device::Cpu).unwrap()));
    let mut w = Workload::frozen(net(), WorkloadKind::Embed(2), 96, &candle_core::Device::Cpu).unwrap();
    let r = time_workload(&mut w, 0, 1).unwrap();
    assert!(r.median_ms > 0.0 && r.images_per_second > 0.0);
    let spec = protonet::EpisodeSpec::new(2, 1, 1).unwrap();
    let err = Workload::frozen(net(), WorkloadKind::TrainStep(spec), 96, &candle_core::Device::Cpu).err().expect("frozen training refused").to_string();
    assert!(err.contains("frozen"), "{err}");
    // E2: a training step through the whole network runs, on small images.
    let mut w = Workload::efficientnet_training(&path, spec, 64, &candle_core::Device::Cpu).unwrap();
    let r = time_workload(&mut w, 0, 2).unwrap();
    assert!(r.median_ms > 0.0 && r.images_per_second > 0.0);
    let err = Workload::efficientnet_training(std::path::Path::new("no/such.safetensors"), spec, 64, &candle_core::Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("no/such.safetensors"), "{err}");
}
