//! The web page of `protonet serve` in a real headless browser (Chromium through
//! chromedriver, WebDriver by fantoccini): create two classes, upload support photos of
//! `../shared/data/coins`, classify a held-out photo and read the label shown; reload and
//! the classes are still there; at a phone's width nothing is wider than the screen. Saves a screenshot (`$CARGO_TARGET_TMPDIR/serve.png`; also
//! `docs/serve.png`, the README's, with `PROTONET_UPDATE_SCREENSHOT=1`).
//!
//! Needs `chromium` and `chromedriver` (Debian: `apt-get install chromium chromium-driver`,
//! which `.ci/run` does when they are missing); without them the test fails saying so.

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::server::{euro_photos, Server};
use fantoccini::{Client, ClientBuilder, Locator};

/// chromedriver on a free port, killed when dropped.
struct Driver(Child, u16);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

fn start_driver() -> Driver {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("the browser test needs chromedriver ({e}): apt-get install chromium chromium-driver (`.ci/run` does it)"));
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "chromedriver did not start within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    Driver(child, port)
}

/// Waits until `check` gives `Some`, or fails naming `what`.
async fn wait_for<T, F: std::future::Future<Output = Option<T>>>(what: &str, seconds: u64, mut check: impl FnMut() -> F) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(started.elapsed() < Duration::from_secs(seconds), "the page did not show {what} within {seconds} s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn text(c: &Client, css: &str) -> Option<String> {
    c.find(Locator::Css(css)).await.ok()?.text().await.ok()
}

/// Creates class `name` on the page and uploads `photos` into it, waiting for them.
async fn add_class(c: &Client, name: &str, photos: &[std::path::PathBuf]) {
    c.find(Locator::Id("new-class")).await.unwrap().send_keys(name).await.unwrap();
    c.find(Locator::Id("add-class")).await.unwrap().click().await.unwrap();
    let section = format!(".class[data-name=\"{name}\"]");
    wait_for(&format!("the class {name}"), 30, || async { c.find(Locator::Css(&section)).await.ok() }).await;
    let input = c.find(Locator::Css(&format!("{section} input.add-photos"))).await.unwrap();
    let paths: Vec<String> = photos.iter().map(|p| p.canonicalize().unwrap().display().to_string()).collect();
    input.send_keys(&paths.join("\n")).await.unwrap();
    let want = format!("{} photos", photos.len());
    wait_for(&format!("{want} in {name}"), 120, || async { text(c, &format!("{section} .count")).await.filter(|t| *t == want) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_creates_classes_classifies_a_photo_and_keeps_them_after_a_reload_needs_data() {
    let (one, two) = (euro_photos("eur_1e"), euro_photos("eur_2e"));
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("store"), &[]);
    let driver = start_driver();
    let caps = serde_json::json!({ "goog:chromeOptions": { "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1100,800"] } });
    let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps.as_object().unwrap().clone())
        .connect(&format!("http://127.0.0.1:{}", driver.1))
        .await
        .expect("connects to chromedriver (is chromium installed?)");
    c.goto(&server.url).await.unwrap();
    wait_for("the model line", 30, || async { text(&c, "#model-line").await.filter(|t| t.contains("Model:")) }).await;

    add_class(&c, "1 euro", &one[..4]).await;
    add_class(&c, "2 euro", &two[..4]).await;
    assert_eq!(c.find_all(Locator::Css(".thumb img")).await.unwrap().len(), 8, "8 thumbnails");

    // A held-out 2-euro photo.
    let query = two[5].canonicalize().unwrap();
    c.find(Locator::Id("query")).await.unwrap().send_keys(&query.display().to_string()).await.unwrap();
    let label = wait_for("the answer", 120, || async { text(&c, "#label").await.filter(|t| !t.is_empty() && t != "Looking...") }).await;
    let bars = text(&c, "#bars").await.unwrap_or_default();
    println!("the page says {label:?}; bars {bars:?}");
    assert!(label.contains("2 euro"), "the page answered {label:?} for a 2-euro photo");
    assert!(bars.contains('%'), "no confidence bars: {bars:?}");
    let crop = c.find(Locator::Id("crop")).await.unwrap().attr("src").await.unwrap().unwrap_or_default();
    assert!(crop.starts_with("data:image/jpeg"), "no crop shown");

    let png = c.screenshot().await.unwrap();
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve.png");
    std::fs::write(&shot, &png).unwrap();
    println!("screenshot: {}", shot.display());
    if std::env::var_os("PROTONET_UPDATE_SCREENSHOT").is_some() {
        std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/serve.png"), &png).unwrap();
    }

    // A reload shows the same classes, read back from the server.
    c.refresh().await.unwrap();
    for name in ["1 euro", "2 euro"] {
        let section = format!(".class[data-name=\"{name}\"] .count");
        wait_for(&format!("{name} after a reload"), 30, || async { text(&c, &section).await.filter(|t| t == "4 photos") }).await;
    }

    // A phone's screen: nothing wider than the window, the query button in reach.
    c.set_window_size(390, 844).await.unwrap();
    let fits = c.execute("return document.documentElement.scrollWidth <= window.innerWidth + 1;", vec![]).await.unwrap();
    assert_eq!(fits, serde_json::Value::Bool(true), "the page is wider than a 390-pixel phone screen");
    assert!(c.find(Locator::Css("label[for=query]")).await.unwrap().is_displayed().await.unwrap());
    c.close().await.unwrap();
}
