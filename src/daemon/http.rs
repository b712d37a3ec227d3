//! `/metrics` (Prometheus text), `/healthz` (liveness: the poll loop is turning) and `/readyz` (models loaded, the
//! S3 self-test passed, a Kafka broker reachable, not draining).
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A poll loop silent for longer than this is wedged: liveness fails and Kubernetes restarts the pod.
pub const MAX_POLL_SILENCE_SECONDS: f64 = 60.0;

#[derive(Clone)]
pub struct Health {
    pub prometheus: PrometheusHandle,
    /// Models loaded and warmed up, S3 self-test passed.
    pub ready: Arc<AtomicBool>,
    /// Set on SIGTERM: readiness goes false so no new traffic is routed here while draining.
    pub draining: Arc<AtomicBool>,
    /// The consumer's state, once it has started.
    pub source: Arc<std::sync::OnceLock<Arc<super::kafka::SourceState>>>,
}

pub fn router(h: Health) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(h)
}

async fn metrics(State(h): State<Health>) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    (StatusCode::OK, [("content-type", "text/plain; version=0.0.4")], h.prometheus.render())
}

async fn healthz(State(h): State<Health>) -> (StatusCode, String) {
    match h.source.get() {
        Some(s) if s.seconds_since_poll() > MAX_POLL_SILENCE_SECONDS => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("poll loop silent for {:.0} s\n", s.seconds_since_poll()))
        }
        _ => (StatusCode::OK, "ok\n".into()),
    }
}

async fn readyz(State(h): State<Health>) -> (StatusCode, String) {
    if h.draining.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n".into());
    }
    if !h.ready.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "starting\n".into());
    }
    if let Some(reason) = h.source.get().and_then(|s| s.not_ready_reason()) {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n"));
    }
    (StatusCode::OK, "ready\n".into())
}

/// Serves until the listener fails; returns the bound address (the port may be 0 in the settings).
pub async fn serve(listen: &str, h: Health) -> Result<std::net::SocketAddr, String> {
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| format!("http.listen {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(h)).await {
            tracing::error!(error = %e, "http server stopped");
        }
    });
    Ok(addr)
}
