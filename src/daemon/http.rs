//! `/metrics` (Prometheus text), `/healthz` (liveness: the poll loop is turning and no device pass has run past
//! its bound) and `/readyz` (models loaded, the S3 self-test passed, a Kafka broker reachable, the object store not
//! denying the daemon's requests, not draining).
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use crate::worker::{DeviceWatch, Stall};

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
    /// Each device thread's progress, once the models are loaded: not alive while a pass runs past its bound.
    pub devices: Arc<std::sync::OnceLock<Vec<Arc<DeviceWatch>>>>,
}

/// The first hung device, if any, with the metrics brought up to date: `glowd_device_stalled{device}` (1 while a
/// pass runs past its bound), `glowd_device_pass_seconds{device}` (how long the pass in hand has run, 0 when
/// idle) and `glowd_device_stalls_total{device}` (hung passes, each counted once, and logged once).
pub fn check_devices(watches: &[Arc<DeviceWatch>]) -> Option<Stall> {
    let mut first = None;
    for w in watches {
        let device = w.device.clone();
        metrics::gauge!("glowd_device_pass_seconds", "device" => device.clone())
            .set(w.running().map_or(0.0, |d| d.as_secs_f64()));
        match w.check() {
            Some((stall, new)) => {
                if new {
                    metrics::counter!("glowd_device_stalls_total", "device" => device.clone()).increment(1);
                    tracing::error!(device = %stall.device, running_s = stall.running.as_secs_f64(),
                        bound_s = stall.bound.as_secs_f64(), "device hung: a forward pass has run past its bound; liveness fails");
                }
                metrics::gauge!("glowd_device_stalled", "device" => device).set(1.0);
                first.get_or_insert(stall);
            }
            None => metrics::gauge!("glowd_device_stalled", "device" => device).set(0.0),
        }
    }
    first
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
            return (StatusCode::SERVICE_UNAVAILABLE, format!("poll loop silent for {:.0} s\n", s.seconds_since_poll()));
        }
        _ => {}
    }
    // A hung device call holds its thread (and with it every job waiting for that device) for good while the poll
    // loop turns and the probes would stay green: only a restart gets the device back.
    if let Some(stall) = h.devices.get().and_then(|w| check_devices(w)) {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{stall}\n"));
    }
    (StatusCode::OK, "ok\n".into())
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
            devices: Default::default(),
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

    /// Issue 16 item 8: a device that never answers. The device thread's real loop (`serve_batches`) runs a batch
    /// whose device call hangs; `/healthz` stays 200 until the pass has run past the bound, then fails naming the
    /// device, the time and the bound, with `glowd_device_stalled` 1 and the stall counted once; when the call
    /// returns, liveness and the gauge come back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn liveness_fails_while_a_device_pass_runs_past_its_bound() {
        use crate::worker::{serve_batches, Batch, BatchItem, DeviceOp, DeviceOutput};
        let h = health(60.0);
        let watch = Arc::new(DeviceWatch::new("fake", std::time::Duration::from_millis(800)));
        h.devices.set(vec![watch.clone()]).ok().unwrap();
        let (batches, rx) = tokio::sync::mpsc::channel::<Batch>(1);
        let (release, hang) = std::sync::mpsc::channel::<()>();
        let device_watch = watch.clone();
        let device = std::thread::spawn(move || {
            serve_batches(rx, &device_watch, |_, ops| {
                let _ = hang.recv(); // the hung device call
                Ok(vec![Ok(DeviceOutput::default()); ops.len()])
            })
        });
        assert_eq!(healthz(State(h.clone())).await.0, StatusCode::OK, "idle");
        let (reply, answer) = tokio::sync::oneshot::channel();
        let op = DeviceOp::Sample { n: 1, temperatures: vec![], seed: 1 };
        batches.send(Batch { model: 0, items: vec![BatchItem { op, reply }] }).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(healthz(State(h.clone())).await.0, StatusCode::OK, "a pass within its bound");
        tokio::time::sleep(std::time::Duration::from_millis(900)).await;
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let metrics = recorder.handle();
        let stall = metrics::with_local_recorder(&recorder, || {
            let first = check_devices(&[watch.clone()]);
            let _ = check_devices(&[watch.clone()]);
            first
        });
        assert!(stall.is_some_and(|s| s.device == "fake" && s.running > s.bound));
        let (status, body) = healthz(State(h.clone())).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.starts_with("device fake: a forward pass has run for 1."), "{body}");
        assert!(body.contains("(bound 0.8 s, batching.max_pass_seconds); the device is hung"), "{body}");
        let text = metrics.render();
        assert!(text.contains("glowd_device_stalled{device=\"fake\"} 1"), "{text}");
        assert!(text.contains("glowd_device_stalls_total{device=\"fake\"} 1"), "counted once over two checks: {text}");
        let mut answer = answer;
        assert!(answer.try_recv().is_err(), "the op is still unanswered");
        release.send(()).unwrap();
        assert!(answer.await.unwrap().is_ok(), "the op is answered once the call returns");
        assert_eq!(healthz(State(h.clone())).await.0, StatusCode::OK, "alive again");
        metrics::with_local_recorder(&recorder, || check_devices(&[watch.clone()]));
        assert!(metrics.render().contains("glowd_device_stalled{device=\"fake\"} 0"));
        drop(batches);
        device.join().unwrap();
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
