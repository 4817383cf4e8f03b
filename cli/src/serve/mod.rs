//! `protonet serve`: the web page of the coin classifier. An HTTP server (axum on tokio)
//! serving one static page (`page.html`) and a JSON API under `/api` (`api.rs`) over a
//! store of classes kept on disk (`store.rs`). The library knows nothing of it.

mod api;
mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use protonet::{Error, FewShotClassifier, Result};

use protonet::classifier::COIN_MODEL;

/// Serve the web page of a few-shot classifier (by default the coin model): create classes,
/// add 4 photos to each, then classify any photo.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// The model directory (default: the coin model, data/coins-efficientnet-lite0, looked
    /// for in the current folder, then in the protonet checkout this binary was built from).
    #[arg(long)]
    model: Option<PathBuf>,
    /// The folder that keeps the classes across restarts (created when missing).
    #[arg(long, default_value = "protonet-classes")]
    store: PathBuf,
    /// The address to listen on; only this machine can reach 127.0.0.1 (give 0.0.0.0:8080
    /// to let phones on your network in). Port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// The largest request body (one photo, or an imported classifier), in megabytes.
    #[arg(long, default_value_t = 32)]
    max_body_mb: usize,
    /// Predictions computed at once; more wait for their turn (within --timeout).
    #[arg(long, default_value_t = 2)]
    max_predictions: usize,
    /// Seconds a request may take before it is answered with an error.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

/// The server's limits and shared state.
pub struct App {
    /// The classes and the classifier; predictions read, edits write.
    store: RwLock<store::Store>,
    /// Held for the whole of an edit, so that two edits never interleave.
    edits: tokio::sync::Mutex<()>,
    /// Bounds the predictions computed at once.
    predictions: tokio::sync::Semaphore,
    max_body: usize,
    timeout: Duration,
    model_name: String,
}

/// Runs the server until Ctrl-C.
pub fn run(a: ServeArgs) -> Result<()> {
    if a.max_body_mb == 0 || a.max_predictions == 0 || a.timeout == 0 {
        return Err(Error::param("max-body-mb/max-predictions/timeout", "must be at least 1"));
    }
    let dir = protonet::locate_model(a.model.as_deref().unwrap_or(COIN_MODEL.as_ref()))?;
    let device = protonet::Device::Cpu;
    let fresh = FewShotClassifier::from_model_dir(&dir, &device)?;
    let store = store::Store::open(&a.store, fresh, &device)?;
    let app = Arc::new(App {
        store: RwLock::new(store),
        edits: tokio::sync::Mutex::new(()),
        predictions: tokio::sync::Semaphore::new(a.max_predictions),
        max_body: a.max_body_mb << 20,
        timeout: Duration::from_secs(a.timeout),
        model_name: dir.canonicalize().unwrap_or(dir).display().to_string(),
    });
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| Error::param("serve", format!("cannot start the server: {e}")))?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(a.addr).await.map_err(|e| Error::param("addr", format!("cannot listen on {}: {e}", a.addr)))?;
        let bound = listener.local_addr().map_err(|e| Error::param("addr", e.to_string()))?;
        let classes = app.store.read().expect("not poisoned").classes().len();
        outln!("serving {} ({classes} classes kept in {}) at http://{bound}/ (Ctrl-C stops)", app.model_name, a.store.display());
        axum::serve(listener, api::router(app))
            .with_graceful_shutdown(async {
                tokio::signal::ctrl_c().await.ok();
            })
            .await
            .map_err(|e| Error::param("serve", e.to_string()))
    })
}
