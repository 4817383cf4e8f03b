//! `protonet serve`'s JSON API, through a real HTTP client against a server on a free
//! loopback port, with the coin model and the euro photos of `../shared/data/coins`:
//! classes and photos, predictions, persistence across a restart, export and import,
//! concurrent edits, bad input (each a clear error, the server still serving, the store
//! unchanged), and a bounded load test.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::server::{euro_photos, Server};
use serde_json::{json, Value};

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(300))).build().into()
}

/// (status, JSON body) of a request.
fn call(req: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, Value) {
    let mut r = req.expect("the server answers");
    let status = r.status().as_u16();
    let body = r.body_mut().read_to_vec().expect("reads the body");
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn post_bytes(a: &ureq::Agent, url: &str, bytes: &[u8]) -> (u16, Value) {
    call(a.post(url).header("Content-Type", "application/octet-stream").send(bytes))
}

fn create(a: &ureq::Agent, s: &Server, name: &str) -> (u16, Value) {
    call(a.post(format!("{}/api/classes", s.url)).send_json(json!({ "name": name })))
}

fn photos_url(s: &Server, class: &str) -> String {
    format!("{}/api/classes/{}/photos", s.url, class.replace(' ', "%20"))
}

fn add(a: &ureq::Agent, s: &Server, class: &str, photo: &Path) -> (u16, Value) {
    post_bytes(a, &photos_url(s, class), &std::fs::read(photo).unwrap())
}

fn predict(a: &ureq::Agent, s: &Server, photo: &Path) -> Value {
    let (status, answer) = post_bytes(a, &format!("{}/api/predict", s.url), &std::fs::read(photo).unwrap());
    assert_eq!(status, 200, "{answer}");
    answer
}

fn classes(a: &ureq::Agent, s: &Server) -> Value {
    call(a.get(format!("{}/api/classes", s.url)).call()).1["classes"].clone()
}

/// Two euro classes of 4 photos each; returns the held-out photos (1 euro, 2 euro).
fn two_classes(a: &ureq::Agent, s: &Server) -> (Vec<std::path::PathBuf>, Vec<std::path::PathBuf>) {
    let (one, two) = (euro_photos("eur_1e"), euro_photos("eur_2e"));
    for (name, photos) in [("1 euro", &one), ("2 euro", &two)] {
        assert_eq!(create(a, s, name).0, 201);
        for p in &photos[..4] {
            let (status, answer) = add(a, s, name, p);
            assert_eq!(status, 200, "{answer}");
        }
    }
    (one[4..].to_vec(), two[4..].to_vec())
}

/// The store's files (the catalog and the classifier), to check that bad input leaves them.
fn snapshot(store: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = vec![("catalog.json".to_string(), std::fs::read(store.join("catalog.json")).unwrap())];
    for f in ["classifier.json", "prototypes.safetensors"] {
        files.push((f.to_string(), std::fs::read(store.join("classifier").join(f)).unwrap()));
    }
    files
}

#[test]
fn classes_photos_predictions_restart_export_and_import_needs_data() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let a = agent();
    let (held_one, held_two) = {
        let s = Server::start(&store, &[]);
        let held = two_classes(&a, &s);
        let listed = classes(&a, &s);
        assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
        assert_eq!(listed[0]["photos"].as_array().unwrap().len(), 4);
        // Thumbnails of the photos.
        let id = listed[0]["photos"][0].as_u64().unwrap();
        let mut thumb = a.get(format!("{}/api/photos/{id}", s.url)).call().unwrap();
        assert_eq!(thumb.headers()["content-type"], "image/jpeg");
        assert!(thumb.body_mut().read_to_vec().unwrap().starts_with(&[0xFF, 0xD8]));
        // The held-out photos: the right class first, with the crop the model saw.
        let mut right = 0;
        for (photo, class) in held.0.iter().map(|p| (p, "1 euro")).chain(held.1.iter().map(|p| (p, "2 euro"))) {
            let p = predict(&a, &s, photo);
            assert!(p["crop"].as_str().unwrap().starts_with("data:image/jpeg;base64,"));
            assert_eq!(p["top"].as_array().unwrap().len(), 2);
            right += usize::from(p["top"][0]["class"] == class);
        }
        let total = held.0.len() + held.1.len();
        println!("{right} of {total} held-out photos ranked right");
        assert!(right * 10 >= total * 7, "only {right} of {total} held-out photos ranked right");
        held
    };

    // A restart keeps every class and answers the same.
    let s = Server::start(&store, &[]);
    let listed = classes(&a, &s);
    assert_eq!(listed.as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect::<Vec<_>>(), ["1 euro", "2 euro"]);
    let before = predict(&a, &s, &held_two[0]);

    // Removing a photo, then a class; an empty class is kept.
    let id = listed[1]["photos"][3].as_u64().unwrap();
    let (status, _) = call(a.delete(format!("{}/{id}", photos_url(&s, "2 euro"))).call());
    assert_eq!(status, 200);
    assert_eq!(classes(&a, &s)[1]["photos"].as_array().unwrap().len(), 3);
    assert_eq!(create(&a, &s, "5 cent").0, 201);
    assert_eq!(classes(&a, &s).as_array().unwrap().len(), 3);

    // Export, change, import: the exported classes come back (photos without thumbnails).
    let mut r = a.get(format!("{}/api/export", s.url)).call().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let tar = r.body_mut().with_config().limit(1 << 30).read_to_vec().unwrap();
    let (status, _) = call(a.delete(format!("{}/api/classes/1%20euro", s.url)).call());
    assert_eq!(status, 200);
    assert_eq!(classes(&a, &s).as_array().unwrap().len(), 2);
    let (status, answer) = post_bytes(&a, &format!("{}/api/import", s.url), &tar);
    assert_eq!(status, 200, "{answer}");
    let names: Vec<String> = classes(&a, &s).as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(names, ["1 euro", "2 euro"]);
    let after = predict(&a, &s, &held_two[0]);
    assert_eq!(after["top"][0]["class"], before["top"][0]["class"]);
    drop(held_one);
}

#[test]
fn bad_input_gets_a_clear_error_and_leaves_the_store_unchanged_needs_data() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let a = agent();
    let mut s = Server::start(&store, &["--max-body-mb", "8"]);
    let (_, held_two) = two_classes(&a, &s);
    let unchanged = snapshot(&store);
    let jpeg = std::fs::read(&held_two[0]).unwrap();
    // A PNG whose header claims 60000 x 60000 pixels.
    let huge = common::png_header_only(60000, 60000);
    let cases: Vec<(&str, String, Vec<u8>, u16, &str)> = vec![
        ("a truncated JPEG", photos_url(&s, "1 euro"), jpeg[..jpeg.len() / 2].to_vec(), 400, "cut off"),
        ("a 60000-pixel PNG header", photos_url(&s, "1 euro"), huge.clone(), 400, "60000x60000"),
        ("a text file named .jpg", photos_url(&s, "1 euro"), b"this is not a photo".to_vec(), 400, "not a PNG or JPEG"),
        ("an empty upload", photos_url(&s, "1 euro"), Vec::new(), 400, "empty"),
        ("a photo for a class that does not exist", photos_url(&s, "3 euro"), jpeg.clone(), 404, "no class `3 euro`"),
        ("a truncated JPEG to predict", format!("{}/api/predict", s.url), jpeg[..jpeg.len() / 2].to_vec(), 400, "cut off"),
        ("a 60000-pixel PNG to predict", format!("{}/api/predict", s.url), huge, 400, "larger than"),
        ("a tar that is not a classifier", format!("{}/api/import", s.url), b"not a tar at all".repeat(64), 400, "not a classifier export"),
    ];
    for (what, url, body, status, message) in cases {
        let (got, answer) = post_bytes(&a, &url, &body);
        let error = answer["error"].as_str().unwrap_or_default();
        println!("{what}: {got} {error}");
        assert_eq!(got, status, "{what}: {answer}");
        assert!(error.contains(message), "{what}: {error:?} does not say {message:?}");
    }
    for (name, message) in [("../etc", "cannot contain /"), ("", "needs a name"), ("a\u{7}b", "control characters"), (&"x".repeat(65), "at most 64")] {
        let (got, answer) = create(&a, &s, name);
        assert_eq!(got, 400, "{name:?}: {answer}");
        assert!(answer["error"].as_str().unwrap().contains(message), "{name:?}: {answer}");
    }
    let (got, answer) = create(&a, &s, "1 euro");
    assert_eq!(got, 409, "{answer}");
    let (got, answer) = call(a.post(format!("{}/api/classes", s.url)).header("Content-Type", "application/json").send("{\"nom\": 1}"));
    assert_eq!(got, 400, "{answer}");
    // A body over the limit (100 MB against 8): refused from its length, or the
    // connection is cut; either way the server keeps serving.
    match a.post(format!("{}/api/predict", s.url)).header("Content-Type", "application/octet-stream").send(&vec![0u8; 100 << 20][..]) {
        Ok(mut r) => {
            assert_eq!(r.status().as_u16(), 413);
            let answer: Value = serde_json::from_slice(&r.body_mut().read_to_vec().unwrap()).unwrap();
            assert!(answer["error"].as_str().unwrap().contains("8 MB limit"), "{answer}");
        }
        Err(e) => println!("100 MB body: the connection was cut ({e})"),
    }
    assert!(s.alive(), "the server died");
    assert_eq!(predict(&a, &s, &held_two[0])["top"].as_array().unwrap().len(), 2, "the server stopped answering");
    assert!(snapshot(&store) == unchanged, "bad input changed the store");
}

#[test]
fn concurrent_edits_keep_the_store_consistent_and_predictions_stay_bounded_needs_data() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let a = agent();
    let s = Server::start(&store, &["--max-predictions", "2"]);
    let (one, two) = (euro_photos("eur_1e"), euro_photos("eur_2e"));
    assert_eq!(create(&a, &s, "1 euro").0, 201);
    assert_eq!(create(&a, &s, "2 euro").0, 201);
    // Two "tabs" adding photos to the same classes at once.
    std::thread::scope(|scope| {
        for tab in 0..2 {
            let (a, s, one, two) = (&a, &s, &one, &two);
            scope.spawn(move || {
                for i in 0..3 {
                    assert_eq!(add(a, s, "1 euro", &one[tab * 3 + i]).0, 200);
                    assert_eq!(add(a, s, "2 euro", &two[tab * 3 + i]).0, 200);
                }
            });
        }
    });
    let listed = classes(&a, &s);
    for c in listed.as_array().unwrap() {
        assert_eq!(c["photos"].as_array().unwrap().len(), 6, "{listed}");
    }
    let saved: Value = serde_json::from_slice(&std::fs::read(store.join("classifier/classifier.json")).unwrap()).unwrap();
    assert_eq!(saved["classes"].as_array().unwrap().iter().map(|c| c["images"].as_u64().unwrap()).collect::<Vec<_>>(), [6, 6], "{saved}");

    // Load: 24 predictions from 8 clients at once, 2 computed at a time.
    let rss = || -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", s.pid())).unwrap_or_default();
        status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    let photo = std::fs::read(&one[0]).unwrap();
    predict(&a, &s, &one[0]);
    let before = rss();
    let started = Instant::now();
    let mut latencies: Vec<f64> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (a, s, photo) = (&a, &s, &photo);
                scope.spawn(move || {
                    (0..3)
                        .map(|_| {
                            let t = Instant::now();
                            let (status, answer) = post_bytes(a, &format!("{}/api/predict", s.url), photo);
                            assert_eq!(status, 200, "{answer}");
                            t.elapsed().as_secs_f64()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    latencies.sort_by(f64::total_cmp);
    let pick = |q: f64| latencies[((q * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len()) - 1];
    let after = rss();
    println!(
        "load: {} predictions from 8 clients in {:.1} s; latency p50 {:.2} s, p99 {:.2} s; server memory {} MB before, {} MB after",
        latencies.len(),
        started.elapsed().as_secs_f64(),
        pick(0.5),
        pick(0.99),
        before / 1024,
        after / 1024
    );
    if before > 0 {
        assert!(after < before + 1024 * 1024, "the server's memory grew from {before} kB to {after} kB");
    }
}
