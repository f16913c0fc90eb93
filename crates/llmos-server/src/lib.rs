//! llmos-server: an OpenAI-compatible HTTP API over the engine's continuous batcher, plus
//! the web pages (chat at `/`, compare-and-label at `/label`), all in one binary.
//!
//! Routes: `POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models`,
//! `POST /v1/embeddings` (400: these models have no embedding head), `GET /health`,
//! `GET /metrics` (Prometheus text), `GET /`, `GET /label`, `POST /label`.

mod api;
mod complete;
mod grammar;
mod metrics;
mod tools;

use api::ApiError;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use llmos_engine::Batcher;
use llmos_model::Model;
use llmos_tokenizer::{ChatTemplate, Tokenizer};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub use grammar::{Grammars, Guided};

/// How `llmos serve` was asked to run.
#[derive(Clone, Debug)]
pub struct Config {
    pub host: String,
    pub port: u16,
    /// Sequences decoded together (slots).
    pub parallel: usize,
    /// Context positions per slot.
    pub ctx: usize,
    pub api_key: Option<String>,
    /// The name `/v1/models` lists and requests must use.
    pub model_id: String,
    /// Requests that may wait for a slot before the server answers 429.
    pub max_queue: usize,
    /// Where `/label` appends comparisons (JSONL that `llmos rm` and `llmos dpo` read).
    pub labels: PathBuf,
}

pub(crate) struct App {
    pub cfg: Config,
    pub batcher: Batcher,
    pub tok: Arc<Tokenizer>,
    pub template: Option<ChatTemplate>,
    pub grammars: Option<Grammars>,
    pub created: u64,
    pub metrics: metrics::Metrics,
    pub labels_lock: Mutex<()>,
}

pub(crate) fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Binds, prints the address, and serves until Ctrl-C.
pub fn serve(
    cfg: Config,
    model: Arc<Model>,
    tok: Arc<Tokenizer>,
    template: Option<ChatTemplate>,
) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    rt.block_on(async move {
        let addr = format!("{}:{}", cfg.host, cfg.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let local = listener
            .local_addr()
            .map_err(|e| format!("cannot read the bound address: {e}"))?;
        let app = router(cfg, model, tok, template)?;
        eprintln!("llmos serve: listening on http://{local} (Ctrl-C to stop)");
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .map_err(|e| format!("server error: {e}"))
    })
}

/// The whole application: routes, state and the API-key check.
pub fn router(
    cfg: Config,
    model: Arc<Model>,
    tok: Arc<Tokenizer>,
    template: Option<ChatTemplate>,
) -> Result<Router, String> {
    let n_vocab = model.config.n_vocab;
    let batcher = Batcher::start(model, tok.clone(), cfg.parallel, cfg.ctx, cfg.max_queue);
    let grammars = match Grammars::new(tok.clone(), n_vocab) {
        Ok(g) => Some(g),
        Err(e) => {
            eprintln!("llmos serve: structured output disabled: {e}");
            None
        }
    };
    let app = Arc::new(App {
        cfg,
        batcher,
        tok,
        template,
        grammars,
        created: now_s(),
        metrics: metrics::Metrics::default(),
        labels_lock: Mutex::new(()),
    });
    let v1 = Router::new()
        .route("/v1/chat/completions", post(complete::chat))
        .route("/v1/completions", post(complete::completions))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model_one))
        .route("/v1/embeddings", post(embeddings))
        .route("/label", post(label_post))
        .route_layer(middleware::from_fn_with_state(app.clone(), auth));
    Ok(Router::new()
        .merge(v1)
        .route("/health", get(health))
        .route("/metrics", get(metrics::render))
        .route("/", get(chat_page))
        .route("/label", get(label_page))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(app.clone(), count))
        .with_state(app))
}

/// `Authorization: Bearer KEY` on every API route when a key is set.
async fn auth(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    if let Some(key) = &app.cfg.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            let msg = if given.is_none() {
                "missing API key: send Authorization: Bearer KEY"
            } else {
                "incorrect API key"
            };
            let mut e = ApiError::bad(msg).with(StatusCode::UNAUTHORIZED, "invalid_api_key");
            e.kind = "authentication_error";
            return e.into_response();
        }
    }
    next.run(req).await
}

/// Request counts and latency by route and status, for /metrics.
async fn count(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let route = match req.uri().path() {
        p @ ("/v1/chat/completions"
        | "/v1/completions"
        | "/v1/models"
        | "/v1/embeddings"
        | "/health"
        | "/metrics"
        | "/"
        | "/label") => p.to_string(),
        p if p.starts_with("/v1/models/") => "/v1/models/{id}".into(),
        _ => "other".into(),
    };
    let t0 = Instant::now();
    let resp = next.run(req).await;
    app.metrics
        .record(&route, resp.status().as_u16(), t0.elapsed().as_secs_f64());
    resp
}

async fn not_found() -> ApiError {
    ApiError::bad("no such route").with(StatusCode::NOT_FOUND, "not_found")
}

async fn health(State(app): State<Arc<App>>) -> impl IntoResponse {
    use std::sync::atomic::Ordering::Relaxed;
    let s = &app.batcher.stats;
    axum::Json(json!({
        "status": "ok",
        "model": app.cfg.model_id,
        "slots": app.cfg.parallel,
        "active": s.active.load(Relaxed),
        "queued": s.queued.load(Relaxed),
    }))
}

fn model_object(app: &App) -> Value {
    json!({
        "id": app.cfg.model_id,
        "object": "model",
        "created": app.created,
        "owned_by": "llmos",
        "context_length": app.batcher.ctx(),
    })
}

async fn models(State(app): State<Arc<App>>) -> impl IntoResponse {
    axum::Json(json!({"object": "list", "data": [model_object(&app)]}))
}

async fn model_one(
    State(app): State<Arc<App>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    check_model(&app, Some(&id))?;
    Ok(axum::Json(model_object(&app)))
}

/// Unknown model names are a 404, as OpenAI answers them.
pub(crate) fn check_model(app: &App, m: Option<&str>) -> Result<(), ApiError> {
    match m {
        None => Ok(()),
        Some(m) if m == app.cfg.model_id || m == "default" => Ok(()),
        Some(m) => Err(ApiError::param(
            "model",
            format!(
                "the model '{m}' does not exist; this server runs '{}'",
                app.cfg.model_id
            ),
        )
        .with(StatusCode::NOT_FOUND, "model_not_found")),
    }
}

async fn embeddings(State(app): State<Arc<App>>, body: Bytes) -> ApiError {
    let v: Result<Value, _> = serde_json::from_slice(&body);
    match v {
        Err(e) => ApiError::bad(format!("request body is not valid JSON: {e}")),
        Ok(v) => {
            if let Err(e) = check_model(&app, v.get("model").and_then(Value::as_str)) {
                return e;
            }
            ApiError::param(
                "model",
                format!(
                    "'{}' is a text generation model with no embedding head; embeddings are not available",
                    app.cfg.model_id
                ),
            )
        }
    }
}

const CHAT_HTML: &str = include_str!("../web/chat.html");
const LABEL_HTML: &str = include_str!("../web/label.html");

async fn chat_page() -> Html<&'static str> {
    Html(CHAT_HTML)
}

async fn label_page() -> Html<&'static str> {
    Html(LABEL_HTML)
}

/// Appends one comparison `{"prompt", "chosen", "rejected"}` to the labels file.
async fn label_post(
    State(app): State<Arc<App>>,
    body: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad(format!("request body is not valid JSON: {e}")))?;
    let field = |k: &str| -> Result<String, ApiError> {
        match v.get(k) {
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
            _ => Err(ApiError::param(
                k,
                format!("'{k}' must be a non-empty string"),
            )),
        }
    };
    let (prompt, chosen, rejected) = (field("prompt")?, field("chosen")?, field("rejected")?);
    if chosen == rejected {
        return Err(ApiError::bad("'chosen' and 'rejected' are the same answer"));
    }
    let line = json!({"prompt": prompt, "chosen": chosen, "rejected": rejected}).to_string();
    let path = app.cfg.labels.clone();
    let _guard = app.labels_lock.lock().map_err(|_| {
        ApiError::bad("labels file lock poisoned").with(StatusCode::INTERNAL_SERVER_ERROR, "io")
    })?;
    append_line(&path, &line).map_err(|e| {
        ApiError::bad(format!("cannot append to {}: {e}", path.display()))
            .with(StatusCode::INTERNAL_SERVER_ERROR, "io")
    })?;
    let n = std::fs::read_to_string(&path).map_or(0, |s| s.lines().count());
    Ok(axum::Json(json!({"ok": true, "file": path, "count": n})))
}

/// One whole line appended with a single write (a reader never sees half of it).
fn append_line(path: &std::path::Path, line: &str) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(format!("{line}\n").as_bytes())
}
