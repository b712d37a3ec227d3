//! The studio's routes: the page and its assets, and the JSON/PNG API the page calls.
//!
//! | route | what |
//! |---|---|
//! | `GET /api/info` | models, attributes, slider range, fit, gate, what is enabled |
//! | `POST /api/faces?model=M` (body: image bytes) | decode, fit, encode once (cached by content hash) |
//! | `POST /api/faces/pick` (JSON) | the same for an image from a listed folder or S3 prefix |
//! | `GET /api/faces/{id}/original?model=M` | the fitted face (PNG) |
//! | `GET /api/list?root=R&path=P` / `?s3=R&path=P` | a confined folder or S3 prefix listing |
//! | `GET /api/edit?model=M&face=F&edits=A:s,B:t` | the edited face (PNG), or 422 when it decodes non-finite |
//! | `GET /api/interpolate?model=M&a=F&b=G&t=T` | one frame (PNG) |
//! | `GET /api/sample?model=M&seed=S&t=T[,T…]&n=N` | samples (PNG grid) |
//! | `GET /api/export?model=M&edits=…` | the `[submit]` template and the `glowd submit` command |
//! | `POST /api/submit` (JSON) | enqueue the run (`--allow-submit`), the same code as `glowd submit` |
//! | `GET /api/runs`, `GET /api/runs/thumb?key=K` | the Runs tab |
use super::engine::{Engine, EngineError};
use super::guard::{self, Guard};
use super::runs::Runs;
use super::options::Options;
use crate::codec::image::{grid, is_image_path, pixels_to_image, Pixels};
use crate::tools::ops::{self, Services, SubmitRequest};
use crate::tools::submit;
use crate::worker::ModelInfo;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

const INDEX: &str = include_str!("assets/index.html");
const APP: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/style.css");

/// Largest JSON body (every request but an upload).
const MAX_JSON_BYTES: usize = 64 * 1024;
/// Entries shown per listed folder.
const MAX_LISTED: usize = 500;
/// Most samples per request.
const MAX_SAMPLES: usize = 16;

pub(super) struct AppState {
    opts: Options,
    engine: Engine,
    roots: Vec<PathBuf>,
    services: Option<Arc<Services>>,
    runs: Option<Arc<Runs>>,
}

impl AppState {
    pub(super) fn new(
        opts: Options,
        engine: Engine,
        roots: Vec<PathBuf>,
        services: Option<Arc<Services>>,
        runs: Option<Arc<Runs>>,
    ) -> AppState {
        AppState { opts, engine, roots, services, runs }
    }

    fn model(&self, m: usize) -> Result<&ModelInfo, ApiError> {
        self.engine.models.get(m).ok_or_else(|| ApiError::bad(format!("no model #{m} (this studio has {})", self.engine.models.len())))
    }

    fn s3_roots(&self) -> Vec<(String, String)> {
        self.opts
            .pipeline
            .as_ref()
            .and_then(|(_, f)| f.s3.as_ref())
            .map(|s| s.allowed_inputs.iter().map(|a| (a.bucket.clone(), a.prefix.trim_end_matches('/').to_string())).collect())
            .unwrap_or_default()
    }
}

type Shared = Arc<AppState>;

pub(super) fn router(state: Shared, guard: Arc<Guard>) -> Router {
    let upload_limit = state.opts.images.max_input_bytes.min(usize::MAX as u64) as usize;
    Router::new()
        .route("/", get(|| async { asset(INDEX, "text/html; charset=utf-8") }))
        .route("/app.js", get(|| async { asset(APP, "text/javascript; charset=utf-8") }))
        .route("/style.css", get(|| async { asset(STYLE, "text/css; charset=utf-8") }))
        .route("/api/info", get(info))
        .route("/api/faces", post(upload).layer(DefaultBodyLimit::max(upload_limit)))
        .route("/api/faces/pick", post(pick))
        .route("/api/faces/{face}/original", get(original))
        .route("/api/list", get(list))
        .route("/api/edit", get(edit))
        .route("/api/interpolate", get(interpolate))
        .route("/api/sample", get(sample))
        .route("/api/export", get(export))
        .route("/api/submit", post(submit_run))
        .route("/api/runs", get(runs))
        .route("/api/runs/thumb", get(thumbnail))
        .layer(DefaultBodyLimit::max(MAX_JSON_BYTES))
        .layer(middleware::from_fn_with_state(guard, guard::check))
        .with_state(state)
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; \
                 connect-src 'self' blob:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
            ),
        ],
        body,
    )
        .into_response()
}

/// An API error: a status and `{"error": …, "kind": …}`.
#[derive(Debug)]
pub(super) struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, kind, message: message.into() }
    }
    fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message, "kind": self.kind }))).into_response()
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        let message = e.to_string();
        match e {
            EngineError::UnknownFace(_) => ApiError::new(StatusCode::NOT_FOUND, "unknown_face", message),
            EngineError::Input(_) => ApiError::new(StatusCode::BAD_REQUEST, "invalid_for_model", message),
            EngineError::NonFinite(_) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "non_finite", message),
            EngineError::Model(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "model", message),
            EngineError::Stopped => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "stopped", message),
        }
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// PNG bytes of one image, encoded as `glowd edit` writes its PNGs (the `image` crate's default PNG encoder).
pub fn png(p: &Pixels) -> Vec<u8> {
    png_of(&pixels_to_image(p))
}

fn png_of(img: &image::DynamicImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).expect("PNG encoding in memory");
    out.into_inner()
}

fn png_response(bytes: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "image/png"), (header::CACHE_CONTROL, "no-store")], bytes).into_response()
}

/// The model the page shows first: the one the pipeline's `[submit]` job runs, when this studio serves it (so the
/// Export tab's template matches the face on screen); otherwise the largest model with directions (the first of
/// equals), so that `--model-dir models` opens on celeba-64, not on celeba-32 or the direction-less mnist-32.
fn default_model(models: &[ModelInfo], submit_job: Option<&toml::Table>) -> usize {
    let named = submit_job.and_then(|job| job.get("model")).and_then(|m| Some((m.get("name")?.as_str()?, m.get("version")?.as_str()?)));
    if let Some(i) = named.and_then(|(n, v)| models.iter().position(|m| (m.name.as_str(), m.version.as_str()) == (n, v))) {
        return i;
    }
    models
        .iter()
        .enumerate()
        .max_by_key(|(i, m)| (!m.attributes.is_empty(), m.image_size, std::cmp::Reverse(*i)))
        .map(|(i, _)| i)
        .unwrap_or(0)
}

async fn info(State(s): State<Shared>) -> Json<Value> {
    let o = &s.opts;
    let submit_table = o.pipeline.as_ref().and_then(|(_, f)| f.submit.as_ref());
    Json(json!({
        "models": s.engine.models.iter().map(|m| json!({
            "name": m.name, "version": m.version, "image_size": m.image_size, "channels": m.channels,
            "levels": m.levels, "attributes": m.attributes,
        })).collect::<Vec<_>>(),
        "default_model": default_model(&s.engine.models, submit_table.map(|t| &t.job)),
        "device": s.engine.device,
        "precision": o.precision.as_str(),
        "max_strength": o.max_strength,
        "step": 0.05,
        "gate": { "max_bits_per_dim": o.gate.max_bits_per_dim, "action": o.gate.action },
        "fit": { "crop": o.images.crop, "resize": o.images.resize },
        "max_upload_bytes": o.images.max_input_bytes,
        "formats": o.images.formats,
        "roots": s.roots.iter().map(|r| r.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| r.display().to_string())).collect::<Vec<_>>(),
        "s3_roots": s.s3_roots().iter().map(|(b, p)| format!("s3://{b}/{p}{}", if p.is_empty() { "" } else { "/" })).collect::<Vec<_>>(),
        "pipeline": o.pipeline.as_ref().map(|(p, _)| p.display().to_string()),
        "submit_prefix": submit_table.and_then(|t| t.prefix.clone()),
        "runs": s.runs.is_some(),
        "allow_submit": o.allow_submit && s.services.is_some() && submit_table.is_some(),
        "token_required": o.token.is_some(),
    }))
}

#[derive(Deserialize)]
struct ModelQuery {
    #[serde(default)]
    model: usize,
}

/// The content hash a face is cached under.
fn face_id(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().take(16).map(|b| format!("{b:02x}")).collect()
}

fn check_face_id(id: &str) -> ApiResult<()> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::bad(format!("`{id}` is not a face id")));
    }
    Ok(())
}

/// Decodes, fits and encodes a face (or finds it cached); answers its id and bits/dim.
async fn load_face(s: &AppState, model: usize, bytes: Bytes, label: String) -> ApiResult<Json<Value>> {
    let info = s.model(model)?.clone();
    let id = face_id(&bytes);
    let bits_per_dim = match s.engine.original(model, &id).await {
        Ok((_, bpd)) => bpd,
        Err(EngineError::UnknownFace(_)) => {
            let settings = s.opts.images.clone();
            let pixels = tokio::task::spawn_blocking(move || {
                crate::pipeline::decode::decode_image(&bytes, &settings, info.channels, info.image_size, &label)
            })
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
            .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "bad_image", format!("{} ({})", e.message, e.kind)))?;
            s.engine.encode(model, &id, pixels).await?
        }
        Err(e) => return Err(e.into()),
    };
    let gate = &s.opts.gate;
    Ok(Json(json!({
        "face": id,
        "model": model,
        "bits_per_dim": bits_per_dim,
        "gate": { "max_bits_per_dim": gate.max_bits_per_dim, "action": gate.action, "over": gate.over(&[bits_per_dim]) },
    })))
}

async fn upload(State(s): State<Shared>, Query(q): Query<ModelQuery>, body: Bytes) -> ApiResult<Json<Value>> {
    load_face(&s, q.model, body, "upload".into()).await
}

#[derive(Deserialize)]
struct Pick {
    #[serde(default)]
    model: usize,
    /// Index of a `--images` folder, and the file's path under it.
    root: Option<usize>,
    /// Index of an S3 root (the pipeline's `allowed_inputs`), and the key under it.
    s3: Option<usize>,
    path: String,
}

/// `rel` under `root`, refusing anything that leaves it (`..`, absolute paths, links pointing out).
fn confined(root: &Path, rel: &str) -> ApiResult<PathBuf> {
    let rel_path = Path::new(rel);
    if rel_path.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
        return Err(ApiError::forbidden(format!("`{rel}` leaves the listed folder")));
    }
    let full = root.join(rel_path).canonicalize().map_err(|e| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("`{rel}`: {e}")))?;
    if !full.starts_with(root) {
        return Err(ApiError::forbidden(format!("`{rel}` leaves the listed folder")));
    }
    Ok(full)
}

/// The S3 root `i` and a key under it, checked with the job contract's confinement rules.
fn s3_key(s: &AppState, i: usize, rel: &str) -> ApiResult<(String, String)> {
    let roots = s.s3_roots();
    let (bucket, prefix) = roots.get(i).cloned().ok_or_else(|| ApiError::bad(format!("no S3 root #{i}")))?;
    let key = crate::job::join_key(&prefix, rel.trim_start_matches('/'));
    crate::job::check_key_allowed(&bucket, &key, &[(bucket.as_str(), prefix.as_str())]).map_err(|e| ApiError::forbidden(e.to_string()))?;
    Ok((bucket, key))
}

async fn pick(State(s): State<Shared>, Json(p): Json<Pick>) -> ApiResult<Json<Value>> {
    let max = s.opts.images.max_input_bytes;
    let too_large = |n: u64| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "input_too_large", format!("{n} bytes, over the {max}-byte limit"));
    let (bytes, label) = match (p.root, p.s3) {
        (Some(r), None) => {
            let root = s.roots.get(r).ok_or_else(|| ApiError::bad(format!("no folder #{r}")))?;
            let file = confined(root, &p.path)?;
            let len = std::fs::metadata(&file).map(|m| m.len()).map_err(|e| ApiError::bad(e.to_string()))?;
            if len > max {
                return Err(too_large(len));
            }
            let bytes = tokio::fs::read(&file).await.map_err(|e| ApiError::bad(format!("{}: {e}", p.path)))?;
            (bytes, p.path.clone())
        }
        (None, Some(i)) => {
            let services = s.services.as_ref().ok_or_else(|| ApiError::bad("no pipeline with [s3]"))?;
            let (bucket, key) = s3_key(&s, i, &p.path)?;
            let bytes = ops::get(&services.s3, &bucket, &key, max).await.map_err(|e| ApiError::bad(format!("{e:#}")))?;
            (bytes, format!("s3://{bucket}/{key}"))
        }
        _ => return Err(ApiError::bad("give either root or s3, and path")),
    };
    load_face(&s, p.model, Bytes::from(bytes), label).await
}

async fn original(State(s): State<Shared>, UrlPath(face): UrlPath<String>, Query(q): Query<ModelQuery>) -> ApiResult<Response> {
    check_face_id(&face)?;
    s.model(q.model)?;
    let (pixels, _) = s.engine.original(q.model, &face).await?;
    Ok(png_response(png(&pixels)))
}

#[derive(Deserialize)]
struct ListQuery {
    root: Option<usize>,
    s3: Option<usize>,
    #[serde(default)]
    path: String,
}

async fn list(State(s): State<Shared>, Query(q): Query<ListQuery>) -> ApiResult<Json<Value>> {
    let rel = q.path.trim_end_matches('/').to_string();
    match (q.root, q.s3) {
        (Some(r), None) => {
            let root = s.roots.get(r).ok_or_else(|| ApiError::bad(format!("no folder #{r}")))?.clone();
            let dir = if rel.is_empty() { root.clone() } else { confined(&root, &rel)? };
            let (mut dirs, mut files) = (Vec::new(), Vec::new());
            let entries = std::fs::read_dir(&dir).map_err(|e| ApiError::bad(format!("`{rel}`: {e}")))?;
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                let path = e.path();
                // Links are followed only when they stay inside the folder.
                let inside = path.canonicalize().is_ok_and(|p| p.starts_with(&root));
                if !inside {
                    continue;
                }
                if path.is_dir() {
                    dirs.push(name);
                } else if is_image_path(&path) {
                    files.push(name);
                }
            }
            dirs.sort();
            files.sort();
            let truncated = files.len() > MAX_LISTED;
            files.truncate(MAX_LISTED);
            Ok(Json(json!({ "path": rel, "dirs": dirs, "files": files, "truncated": truncated })))
        }
        (None, Some(i)) => {
            let services = s.services.as_ref().ok_or_else(|| ApiError::bad("no pipeline with [s3]"))?;
            let (bucket, key) = s3_key(&s, i, &format!("{rel}{}x", if rel.is_empty() { "" } else { "/" }))?;
            let prefix = key.strip_suffix('x').unwrap_or(&key).to_string();
            let (dirs, keys) = ops::list_folder(&services.s3, &bucket, &prefix, MAX_LISTED).await.map_err(|e| ApiError::bad(format!("{e:#}")))?;
            let strip = |k: &str| k.strip_prefix(&prefix).unwrap_or(k).trim_end_matches('/').to_string();
            let extensions = services.file.submit.as_ref().map(|t| t.extensions.clone()).unwrap_or_else(|| {
                ["png", "jpg", "jpeg", "webp"].iter().map(|e| e.to_string()).collect()
            });
            let files: Vec<String> = keys.iter().filter(|k| submit::is_image(k, &extensions)).map(|k| strip(k)).collect();
            Ok(Json(json!({ "path": rel, "dirs": dirs.iter().map(|d| strip(d)).collect::<Vec<_>>(), "files": files, "truncated": keys.len() >= MAX_LISTED })))
        }
        _ => Err(ApiError::bad("give either root or s3")),
    }
}

/// `A:0.8,B:-1.2` → pairs, checked against the model's directions and the strength bound.
fn parse_edits(spec: &str, model: &ModelInfo, max_strength: f64) -> ApiResult<Vec<(String, f64)>> {
    let mut out: Vec<(String, f64)> = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = part.split_once(':').or_else(|| part.split_once('=')).ok_or_else(|| ApiError::bad(format!("`{part}` is not Attribute:strength")))?;
        let strength: f64 = value.trim().parse().map_err(|_| ApiError::bad(format!("`{part}`: `{value}` is not a number")))?;
        if !strength.is_finite() || strength.abs() > max_strength + 1e-9 {
            return Err(ApiError::bad(format!("`{part}`: strength {strength} is outside ±{max_strength}")));
        }
        let name = name.trim();
        if !model.attributes.iter().any(|a| a == name) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "unknown_attribute",
                format!("unknown attribute `{name}` (model {} has: {})", model.name, model.attributes.join(", ")),
            ));
        }
        if out.iter().any(|(a, _)| a == name) {
            return Err(ApiError::bad(format!("`{name}` given twice")));
        }
        out.push((name.to_string(), strength));
    }
    Ok(out)
}

#[derive(Deserialize)]
struct EditQuery {
    #[serde(default)]
    model: usize,
    face: String,
    #[serde(default)]
    edits: String,
}

async fn edit(State(s): State<Shared>, Query(q): Query<EditQuery>) -> ApiResult<Response> {
    check_face_id(&q.face)?;
    let edits = parse_edits(&q.edits, s.model(q.model)?, s.opts.max_strength)?;
    let pixels = s.engine.edit(q.model, &q.face, edits).await?;
    Ok(png_response(png(&pixels)))
}

#[derive(Deserialize)]
struct InterpolateQuery {
    #[serde(default)]
    model: usize,
    a: String,
    b: String,
    t: f64,
}

async fn interpolate(State(s): State<Shared>, Query(q): Query<InterpolateQuery>) -> ApiResult<Response> {
    check_face_id(&q.a)?;
    check_face_id(&q.b)?;
    s.model(q.model)?;
    if !(0.0..=1.0).contains(&q.t) {
        return Err(ApiError::bad(format!("t = {} is outside 0..=1", q.t)));
    }
    let pixels = s.engine.interpolate(q.model, &q.a, &q.b, q.t).await?;
    Ok(png_response(png(&pixels)))
}

#[derive(Deserialize)]
struct SampleQuery {
    #[serde(default)]
    model: usize,
    #[serde(default)]
    seed: u64,
    /// One temperature, or one per level (finest first), comma-separated.
    t: String,
    #[serde(default = "default_samples")]
    n: usize,
}

fn default_samples() -> usize {
    8
}

async fn sample(State(s): State<Shared>, Query(q): Query<SampleQuery>) -> ApiResult<Response> {
    let levels = s.model(q.model)?.levels;
    let given: Vec<f64> = q
        .t
        .split(',')
        .map(|x| x.trim().parse::<f64>().map_err(|_| ApiError::bad(format!("temperature `{x}` is not a number"))))
        .collect::<Result<_, _>>()?;
    if given.iter().any(|t| !(0.0..=2.0).contains(t)) {
        return Err(ApiError::bad("temperatures must be within 0..=2"));
    }
    let temperatures = match given.len() {
        1 => vec![given[0]; levels],
        n if n == levels => given,
        n => return Err(ApiError::bad(format!("{n} temperatures: give one, or one per level ({levels})"))),
    };
    if q.n == 0 || q.n > MAX_SAMPLES {
        return Err(ApiError::bad(format!("n must be within 1..={MAX_SAMPLES}")));
    }
    let images = s.engine.sample(q.model, q.n, temperatures, q.seed).await?;
    Ok(png_response(png_of(&grid(&images, images.len().min(8)))))
}

/// A JSON value as an inline TOML value (the pipeline files write `[submit] job` as one inline table).
fn inline_toml(v: &Value) -> String {
    let key = |k: &str| {
        if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            k.to_string()
        } else {
            toml::Value::String(k.to_string()).to_string()
        }
    };
    match v {
        Value::Null => "\"\"".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => toml::Value::String(s.clone()).to_string(),
        Value::Array(a) => format!("[{}]", a.iter().map(inline_toml).collect::<Vec<_>>().join(", ")),
        Value::Object(o) => {
            // The order the pipeline files use: what and whose first (serde_json's objects are sorted by key).
            let rank = |k: &str| ["kind", "name", "attribute", "model", "version", "strength"].iter().position(|x| *x == k).unwrap_or(9);
            let mut fields: Vec<(&String, &Value)> = o.iter().collect();
            fields.sort_by_key(|(k, _)| rank(k));
            format!("{{ {} }}", fields.iter().map(|(k, v)| format!("{} = {}", key(k), inline_toml(v))).collect::<Vec<_>>().join(", "))
        }
    }
}

/// Strengths as the page shows them (two decimals), so the template says 0.8 and not 0.8000000000000002.
fn rounded(edits: &[(String, f64)]) -> Vec<(String, f64)> {
    edits.iter().filter(|(_, s)| *s != 0.0).map(|(a, s)| (a.clone(), (s * 100.0).round() / 100.0)).collect()
}

/// The job template for these strengths: the pipeline's `[submit] job` with its edits replaced (as `glowd submit
/// --attr` replaces them), or, without one, an edit job on the model shown.
fn template(s: &AppState, model: &ModelInfo, edits: &[(String, f64)]) -> ApiResult<Value> {
    match s.opts.pipeline.as_ref().and_then(|(_, f)| f.submit.as_ref()) {
        Some(settings) => submit::template(settings, edits).map_err(ApiError::bad),
        None => Ok(json!({
            "kind": "edit",
            "model": { "name": model.name, "version": model.version },
            "edits": edits.iter().map(|(a, s)| json!({ "attribute": a, "strength": s })).collect::<Vec<_>>(),
            "write_latents": false,
        })),
    }
}

#[derive(Deserialize)]
struct ExportQuery {
    #[serde(default)]
    model: usize,
    #[serde(default)]
    edits: String,
}

async fn export(State(s): State<Shared>, Query(q): Query<ExportQuery>) -> ApiResult<Json<Value>> {
    let model = s.model(q.model)?.clone();
    let edits = rounded(&parse_edits(&q.edits, &model, s.opts.max_strength)?);
    let template = template(&s, &model, &edits)?;
    let mut problems = Vec::new();
    if edits.is_empty() {
        problems.push("move a slider: an edit job needs at least one non-zero strength".to_string());
    } else if let Err(e) = submit::job(&template, "export", "s3://bucket/key.png") {
        problems.push(e);
    }
    let (tm, tv) = (template["model"]["name"].as_str().unwrap_or(""), template["model"]["version"].as_str().unwrap_or(""));
    if (tm, tv) != (model.name.as_str(), model.version.as_str()) {
        problems.push(format!("the pipeline's [submit] job runs model {tm}@{tv}, not {}@{} shown here", model.name, model.version));
    }
    let pipeline = s.opts.pipeline.as_ref().map(|(p, _)| p.display().to_string()).unwrap_or_else(|| "pipelines/bulk-edit.toml".into());
    let prefix = s
        .opts
        .pipeline
        .as_ref()
        .and_then(|(_, f)| f.submit.as_ref().and_then(|t| t.prefix.clone()))
        .or_else(|| s.s3_roots().first().map(|(b, p)| format!("s3://{b}/{p}/")))
        .unwrap_or_else(|| "s3://<bucket>/<prefix>/".into());
    let attrs: String = edits.iter().map(|(a, v)| format!(" --attr {a}={v:+}")).collect();
    let toml_text = format!("[submit]\njob = {}\n", inline_toml(&template));
    Ok(Json(json!({
        "toml": toml_text,
        "command": format!("glowd submit --pipeline {pipeline} --prefix {prefix}{attrs}"),
        "template": template,
        "prefix": prefix,
        "problems": problems,
    })))
}

#[derive(Deserialize)]
struct SubmitBody {
    #[serde(default)]
    model: usize,
    edits: String,
    prefix: Option<String>,
    limit: Option<usize>,
}

async fn submit_run(State(s): State<Shared>, Json(b): Json<SubmitBody>) -> ApiResult<Json<Value>> {
    let has_table = s.opts.pipeline.as_ref().is_some_and(|(_, f)| f.submit.is_some());
    let services = match (&s.services, s.opts.allow_submit && has_table) {
        (Some(services), true) => services.clone(),
        _ => return Err(ApiError::forbidden("submitting needs --pipeline (with [submit], [kafka] and [s3]) and --allow-submit")),
    };
    let model = s.model(b.model)?.clone();
    let edits = rounded(&parse_edits(&b.edits, &model, s.opts.max_strength)?);
    if edits.is_empty() {
        return Err(ApiError::bad("move a slider: an edit job needs at least one non-zero strength"));
    }
    let req = SubmitRequest { prefix: b.prefix.filter(|p| !p.trim().is_empty()), attrs: edits, limit: b.limit, ..Default::default() };
    let plan = ops::plan_submit(&services, &req).await.map_err(|e| ApiError::bad(format!("{e:#}")))?;
    let done = ops::enqueue(&services, &plan, &req, &|| {}).await.map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "enqueue", format!("{e:#}")))?;
    tracing::info!(run = %plan.run, images = plan.jobs.len(), prefix = %plan.prefix, "studio: run submitted");
    Ok(Json(json!({ "run": plan.run, "prefix": plan.prefix, "images": plan.jobs.len(), "enqueued": done.sent, "skipped": done.skipped })))
}

async fn runs(State(s): State<Shared>) -> ApiResult<Json<Value>> {
    let runs = s.runs.as_ref().ok_or_else(|| ApiError::bad("the Runs tab needs --pipeline with [kafka] and [s3]"))?;
    Ok(Json(runs.overview().await))
}

#[derive(Deserialize)]
struct ThumbQuery {
    key: String,
}

async fn thumbnail(State(s): State<Shared>, Query(q): Query<ThumbQuery>) -> ApiResult<Response> {
    let runs = s.runs.as_ref().ok_or_else(|| ApiError::bad("the Runs tab needs --pipeline with [kafka] and [s3]"))?;
    let bytes = runs.thumbnail(&q.key).await.map_err(ApiError::forbidden)?;
    let content_type = if q.key.ends_with(".webp") { "image/webp" } else { "image/png" };
    Ok(([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "max-age=3600")], bytes).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confinement_refuses_what_leaves_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir(root.join("in")).unwrap();
        std::fs::write(root.join("in/a.png"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("in/out")).unwrap();
        assert!(confined(&root, "in/a.png").is_ok());
        for bad in ["../x", "/etc/passwd", "in/../../x", "in/out/passwd"] {
            assert!(confined(&root, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_default_model_is_the_pipelines_else_the_largest_with_directions() {
        let m = |name: &str, size: u32, attrs: &[&str]| ModelInfo {
            name: name.into(),
            version: "1".into(),
            image_size: size,
            channels: 3,
            levels: 3,
            latent_shapes: vec![],
            attributes: attrs.iter().map(|a| a.to_string()).collect(),
            fingerprint: String::new(),
        };
        // What `--model-dir models` discovers (sorted by name): celeba-64 is shown, not the direction-less mnist-32.
        let repo = [m("celeba-32", 32, &["Smiling"]), m("celeba-64", 64, &["Smiling"]), m("mnist-32", 32, &[])];
        assert_eq!(default_model(&repo, None), 1);
        assert_eq!(default_model(&[m("big", 256, &[]), m("small", 32, &["Smiling"])], None), 1);
        assert_eq!(default_model(&[m("a", 64, &["Smiling"]), m("b", 64, &["Smiling"])], None), 0);
        assert_eq!(default_model(&[], None), 0);
        let job = |name: &str, version: &str| -> toml::Table {
            toml::from_str(&format!("kind = \"edit\"\nmodel = {{ name = \"{name}\", version = \"{version}\" }}")).unwrap()
        };
        assert_eq!(default_model(&repo, Some(&job("celeba-32", "1"))), 0);
        // A [submit] model this studio does not serve (or another version of it) falls back to the rule.
        assert_eq!(default_model(&repo, Some(&job("celeba-32", "2"))), 1);
        assert_eq!(default_model(&repo, Some(&job("cats", "1"))), 1);
        // The shipped pipeline files run celeba-64.
        for file in ["bulk-edit", "latent-dataset", "nightly-augment", "local"] {
            let text = std::fs::read_to_string(format!("{}/pipelines/{file}.toml", env!("CARGO_MANIFEST_DIR"))).unwrap();
            let table: toml::Table = toml::from_str(&text).unwrap();
            let submit = table["submit"]["job"].as_table().unwrap();
            assert_eq!(default_model(&repo, Some(submit)), 1, "{file}");
        }
    }

    #[test]
    fn templates_are_inline_toml() {
        let v = json!({"kind": "edit", "model": {"name": "celeba-32", "version": "1"}, "edits": [{"attribute": "Smiling", "strength": 0.8}], "write_latents": false});
        let text = inline_toml(&v);
        assert_eq!(text, r#"{ kind = "edit", model = { name = "celeba-32", version = "1" }, edits = [{ attribute = "Smiling", strength = 0.8 }], write_latents = false }"#);
        let parsed: toml::Table = toml::from_str(&format!("job = {text}")).unwrap();
        assert_eq!(parsed["job"]["edits"][0]["strength"].as_float(), Some(0.8));
        assert_eq!(rounded(&[("A".into(), 0.8000000000000002), ("B".into(), 0.0)]), vec![("A".to_string(), 0.8)]);
    }
}
