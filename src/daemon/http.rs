//! `/metrics` (Prometheus text), `/healthz` (liveness: the poll loop is turning) and `/readyz` (models loaded, the
//! S3 self-test passed, a Kafka broker reachable, the object store not denying the daemon's requests, not
//! draining).
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Clone)]
pub struct Health {
    pub prometheus: PrometheusHandle,
    /// A poll loop silent for longer than this is wedged: liveness fails and Kubernetes restarts the pod
    /// (`http.max_poll_silence_seconds`).
    pub max_poll_silence_seconds: f64,
    /// Models loaded and warmed up, S3 self-test passed.
    pub ready: Arc<AtomicBool>,
    /// Set on SIGTERM: readiness goes false so no new traffic is routed here while draining.
    pub draining: Arc<AtomicBool>,
    /// The consumer's state, once it has started.
    pub source: Arc<std::sync::OnceLock<Arc<crate::kafka::SourceState>>>,
    /// The object store's answers to the daemon, once the pipeline has started: not ready while it denies them.
    pub store: Arc<std::sync::OnceLock<Arc<crate::pipeline::StoreHealth>>>,
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
        Some(s) if s.seconds_since_poll() > h.max_poll_silence_seconds => {
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
    if let Some(reason) = h.store.get().and_then(|s| s.not_ready_reason()) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::SourceState;

    fn health(max_poll_silence_seconds: f64) -> Health {
        let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder().handle();
        Health {
            prometheus,
            max_poll_silence_seconds,
            ready: Arc::new(AtomicBool::new(true)),
            draining: Arc::new(AtomicBool::new(false)),
            source: Default::default(),
            store: Default::default(),
        }
    }

    fn silent_for(state: &SourceState, seconds: u64) {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        state.last_poll_ms.store(now - seconds * 1000, Ordering::Relaxed);
    }

    /// G19's wedged poll loop (docs/reliability.md), at the unit level (a real process cannot be wedged from outside
    /// without stopping its HTTP server too): liveness holds while the loop turns, fails once it has been silent
    /// past the bound, and the bound is the setting's.
    #[tokio::test]
    async fn liveness_fails_once_the_poll_loop_is_silent_past_the_bound() {
        let h = health(60.0);
        // Before the consumer starts (models loading): alive; a startup probe covers that phase.
        assert_eq!(healthz(State(h.clone())).await.0, StatusCode::OK);
        let state = Arc::new(SourceState::default());
        h.source.set(state.clone()).ok().unwrap();
        silent_for(&state, 0);
        assert_eq!(healthz(State(h.clone())).await.0, StatusCode::OK);
        silent_for(&state, 59);
        assert_eq!(healthz(State(h.clone())).await.0, StatusCode::OK);
        silent_for(&state, 61);
        let (status, body) = healthz(State(h.clone())).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.starts_with("poll loop silent for 61 s"), "{body}");
        // Readiness is a different question: a wedged loop with everything else in order still says ready, and
        // the restart comes from liveness.
        assert_eq!(readyz(State(h.clone())).await.0, StatusCode::OK);
        // A longer bound from the settings keeps the same silence alive.
        let patient = Health { max_poll_silence_seconds: 120.0, ..h };
        assert_eq!(healthz(State(patient)).await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn readiness_says_why_not() {
        let h = health(60.0);
        h.ready.store(false, Ordering::Relaxed);
        assert_eq!(readyz(State(h.clone())).await, (StatusCode::SERVICE_UNAVAILABLE, "starting\n".to_string()));
        h.ready.store(true, Ordering::Relaxed);
        let state = Arc::new(SourceState::default());
        h.source.set(state.clone()).ok().unwrap();
        state.brokers_down.store(true, Ordering::Relaxed);
        assert_eq!(readyz(State(h.clone())).await.1, "kafka: no broker reachable\n");
        state.brokers_down.store(false, Ordering::Relaxed);
        assert_eq!(readyz(State(h.clone())).await.0, StatusCode::OK);
        let store = Arc::new(crate::pipeline::StoreHealth::default());
        h.store.set(store.clone()).ok().unwrap();
        let scope = crate::pipeline::StoreScope::read("glowd");
        store.denied(&scope, "AccessDenied");
        let (status, body) = readyz(State(h.clone())).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.starts_with("object store: read access to bucket glowd denied for"), "{body}");
        store.served(&scope);
        assert_eq!(readyz(State(h.clone())).await.0, StatusCode::OK);
        h.draining.store(true, Ordering::Relaxed);
        assert_eq!(readyz(State(h)).await, (StatusCode::SERVICE_UNAVAILABLE, "draining\n".to_string()));
    }
}
