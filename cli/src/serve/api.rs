//! The JSON API under `/api` and the page at `/` (documented with `curl` examples in
//! docs/SERVE.md). Errors are JSON `{"error": "..."}` with a status that says whose fault
//! it is: 400 bad input, 404 no such class or photo, 413 too large, 503 busy or too slow.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use base64::Engine;
use protonet::data::{decode_image, ImageConfig};
use serde::Deserialize;
use serde_json::{json, Value};

use super::App;

/// The page: one static file, no build step.
const PAGE: &str = include_str!("page.html");

/// Files an imported classifier may hold, at most.
const MAX_IMPORT_FILES: usize = 16;

/// An answer with an error status and a message for the page.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }
    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

impl From<protonet::Error> for ApiError {
    fn from(e: protonet::Error) -> Self {
        use protonet::Error as E;
        let status = match &e {
            E::Image { .. } | E::InvalidParameter { .. } | E::NotEnoughClasses { .. } | E::NotEnoughImages { .. } | E::Dataset { .. } => {
                StatusCode::BAD_REQUEST
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, e.to_string())
    }
}

type ApiResult<T> = std::result::Result<T, ApiError>;

/// The routes, with the body limit.
pub fn router(app: Arc<App>) -> Router {
    let limit = app.max_body;
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/api/model", get(model))
        .route("/api/classes", get(list).post(create))
        .route("/api/classes/{name}", delete(delete_class))
        .route("/api/classes/{name}/photos", post(add_photo))
        .route("/api/classes/{name}/photos/{id}", delete(delete_photo))
        .route("/api/photos/{id}", get(thumbnail))
        .route("/api/predict", post(predict))
        .route("/api/export", get(export))
        .route("/api/import", post(import))
        .fallback(|| async { ApiError::not_found("no such page or API route (the API is described in docs/SERVE.md)") })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(app)
}

/// The body, or an error saying the limit when it is too large.
fn body(app: &App, body: std::result::Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    let bytes = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("the upload is larger than the {} MB limit", app.max_body >> 20))
        } else {
            ApiError::bad(format!("could not read the upload: {r}"))
        }
    })?;
    if bytes.is_empty() {
        return Err(ApiError::bad("the upload is empty (0 bytes)"));
    }
    Ok(bytes)
}

/// Runs `work` on a blocking thread, within the request timeout.
async fn blocking<T: Send + 'static>(app: &App, work: impl FnOnce() -> ApiResult<T> + Send + 'static) -> ApiResult<T> {
    match tokio::time::timeout(app.timeout, tokio::task::spawn_blocking(work)).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("the work failed: {e}"))),
        Err(_) => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("the request took longer than {} s; try again", app.timeout.as_secs()))),
    }
}

/// A decoded photo; a damaged one (cut-off JPEG or PNG) is refused, unlike the CLI, since
/// the page can ask for it again.
fn decode(bytes: &[u8]) -> ApiResult<image::DynamicImage> {
    let (img, warning) = decode_image(bytes, Path::new("the uploaded photo"))?;
    match warning {
        Some(w) => Err(ApiError::bad(format!("the uploaded photo: {w}; upload it again"))),
        None => Ok(img),
    }
}

fn no_class(name: &str) -> ApiError {
    ApiError::not_found(format!("no class `{name}`"))
}

async fn model(State(app): State<Arc<App>>) -> Json<Value> {
    let store = app.store.read().expect("not poisoned");
    let config = store.classifier.model().config();
    Json(json!({
        "model": std::path::Path::new(&app.model_name).file_name().map_or(app.model_name.clone(), |n| n.to_string_lossy().into_owned()),
        "description": config.description,
        "image_size": config.image.size,
        "crop": config.image.crop.is_some(),
        "rotations": store.classifier.rotations(),
        "method": config.method.name(),
        "max_body_mb": app.max_body >> 20,
    }))
}

async fn list(State(app): State<Arc<App>>) -> Json<Value> {
    let store = app.store.read().expect("not poisoned");
    Json(json!({ "classes": store.classes(), "threshold": store.classifier.threshold() }))
}

#[derive(Deserialize)]
struct NewClass {
    name: String,
}

async fn create(State(app): State<Arc<App>>, request: std::result::Result<Json<NewClass>, JsonRejection>) -> ApiResult<(StatusCode, Json<Value>)> {
    let Json(request) = request.map_err(|r| ApiError::bad(format!("expected a JSON object {{\"name\": \"...\"}}: {}", r.body_text())))?;
    let _edit = app.edits.lock().await;
    let mut store = app.store.write().expect("not poisoned");
    let name = super::store::check_class_name(&request.name)?;
    if store.classes().iter().any(|c| c.name == name) {
        return Err(ApiError::new(StatusCode::CONFLICT, format!("a class `{name}` exists already")));
    }
    let name = store.create_class(&name)?;
    Ok((StatusCode::CREATED, Json(json!({ "name": name }))))
}

async fn delete_class(State(app): State<Arc<App>>, UrlPath(name): UrlPath<String>) -> ApiResult<Json<Value>> {
    let _edit = app.edits.lock().await;
    let mut store = app.store.write().expect("not poisoned");
    if !store.classes().iter().any(|c| c.name == name) {
        return Err(no_class(&name));
    }
    store.delete_class(&name)?;
    Ok(Json(json!({ "deleted": name })))
}

async fn add_photo(State(app): State<Arc<App>>, UrlPath(name): UrlPath<String>, upload: std::result::Result<Bytes, BytesRejection>) -> ApiResult<Json<Value>> {
    let bytes = body(&app, upload)?;
    let _edit = app.edits.lock().await;
    let worker = app.clone();
    blocking(&app, move || {
        let (embedding, img) = {
            let store = worker.store.read().expect("not poisoned");
            if !store.classes().iter().any(|c| c.name == name) {
                return Err(no_class(&name));
            }
            let img = decode(&bytes)?;
            let prepared = store.classifier.model().config().image.prepare(&img);
            let embedding = store.classifier.embed(&[prepared])?.pop().expect("one image, one embedding");
            (embedding, img)
        };
        let mut store = worker.store.write().expect("not poisoned");
        let id = store.add_photo(&name, embedding, &img)?;
        let photos = store.classes().iter().find(|c| c.name == name).map_or(0, |c| c.photos.len());
        Ok(Json(json!({ "class": name, "id": id, "photos": photos })))
    })
    .await
}

async fn delete_photo(State(app): State<Arc<App>>, UrlPath((name, id)): UrlPath<(String, u64)>) -> ApiResult<Json<Value>> {
    let _edit = app.edits.lock().await;
    let mut store = app.store.write().expect("not poisoned");
    let class = store.classes().iter().find(|c| c.name == name).ok_or_else(|| no_class(&name))?;
    if !class.photos.contains(&id) {
        return Err(ApiError::not_found(format!("class `{name}` has no photo {id}")));
    }
    store.delete_photo(&name, id)?;
    Ok(Json(json!({ "class": name, "deleted": id })))
}

async fn thumbnail(State(app): State<Arc<App>>, UrlPath(id): UrlPath<u64>) -> ApiResult<Response> {
    let file = app.store.read().expect("not poisoned").thumbnail(id);
    let bytes = tokio::fs::read(&file).await.map_err(|_| ApiError::not_found(format!("no thumbnail for photo {id}")))?;
    Ok(([(header::CONTENT_TYPE, "image/jpeg"), (header::CACHE_CONTROL, "max-age=86400")], bytes).into_response())
}

/// A JPEG data URL of `img`, at most `side` pixels.
fn data_url(img: &image::DynamicImage, side: u32) -> String {
    let mut jpeg = Vec::new();
    let small = img.thumbnail(side, side).to_rgb8();
    small.write_to(&mut std::io::Cursor::new(&mut jpeg), image::ImageFormat::Jpeg).expect("JPEG encoding into memory");
    format!("data:image/jpeg;base64,{}", base64::engine::general_purpose::STANDARD.encode(jpeg))
}

async fn predict(State(app): State<Arc<App>>, upload: std::result::Result<Bytes, BytesRejection>) -> ApiResult<Json<Value>> {
    let bytes = body(&app, upload)?;
    let permit = tokio::time::timeout(app.timeout, app.predictions.acquire())
        .await
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the server is busy with other photos; try again"))?
        .expect("the semaphore is never closed");
    let worker = app.clone();
    let answer = blocking(&app, move || {
        let img = decode(&bytes)?;
        let store = worker.store.read().expect("not poisoned");
        let image = &store.classifier.model().config().image;
        // The crop the model uses (when it crops), shown to the user.
        let crop = image.crop.as_ref().and_then(|c| c.crop(&img));
        let seen = crop.as_ref().unwrap_or(&img);
        let prepared = ImageConfig { crop: None, ..image.clone() }.prepare(seen);
        let p = store.classifier.predict(&prepared)?;
        let top: Vec<Value> = p.ranked.iter().take(3).map(|s| json!({ "class": s.class, "confidence": s.probability })).collect();
        Ok(Json(json!({
            "class": p.class,
            "label": p.label(),
            "not_sure": p.class.is_none(),
            "confidence": p.confidence,
            "top": top,
            "cropped": crop.is_some(),
            "crop": data_url(seen, 224),
        })))
    })
    .await;
    drop(permit);
    answer
}

async fn export(State(app): State<Arc<App>>) -> ApiResult<Response> {
    let worker = app.clone();
    let tar = blocking(&app, move || {
        let dir = tempfile::tempdir().map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        let out = dir.path().join("classifier");
        worker.store.read().expect("not poisoned").export_to(&out)?;
        let mut builder = tar::Builder::new(Vec::new());
        builder.append_dir_all(".", &out).map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        builder.into_inner().map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "application/x-tar"), (header::CONTENT_DISPOSITION, "attachment; filename=\"classifier.tar\"")], tar).into_response())
}

async fn import(State(app): State<Arc<App>>, upload: std::result::Result<Bytes, BytesRejection>) -> ApiResult<Json<Value>> {
    let bytes = body(&app, upload)?;
    let _edit = app.edits.lock().await;
    let worker = app.clone();
    blocking(&app, move || {
        let dir = tempfile::tempdir().map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        unpack(&bytes, dir.path())?;
        let imported = protonet::FewShotClassifier::load(dir.path(), &protonet::Device::Cpu)?;
        let mut store = worker.store.write().expect("not poisoned");
        store.replace(imported)?;
        Ok(Json(json!({ "classes": store.classes() })))
    })
    .await
}

/// Unpacks a tar of classifier files (plain files named `*.json` or `*.safetensors`, no
/// folders, links or paths) into `dir`.
fn unpack(bytes: &[u8], dir: &Path) -> ApiResult<()> {
    let bad = |why: String| ApiError::bad(format!("not a classifier export (a tar of the files `protonet predict --save` writes): {why}"));
    let mut archive = tar::Archive::new(bytes);
    let mut count = 0;
    for entry in archive.entries().map_err(|e| bad(e.to_string()))? {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let path = entry.path().map_err(|e| bad(e.to_string()))?.into_owned();
        let kind = entry.header().entry_type();
        if kind.is_dir() && path.components().all(|c| matches!(c, std::path::Component::CurDir)) {
            continue;
        }
        let name = path.file_name().and_then(|n| n.to_str()).map(str::to_string);
        let plain = path.components().filter(|c| !matches!(c, std::path::Component::CurDir)).count() == 1;
        let Some(name) = name.filter(|n| plain && kind.is_file() && (n.ends_with(".json") || n.ends_with(".safetensors"))) else {
            return Err(bad(format!("unexpected entry {}", path.display())));
        };
        count += 1;
        if count > MAX_IMPORT_FILES {
            return Err(bad(format!("more than {MAX_IMPORT_FILES} files")));
        }
        let mut data = Vec::new();
        entry.read_to_end(&mut data).map_err(|e| bad(e.to_string()))?;
        std::fs::write(dir.join(&name), data).map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    }
    if count == 0 {
        return Err(bad("it holds no files".into()));
    }
    Ok(())
}
