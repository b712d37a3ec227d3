//! `glowd studio`: a web page to try edits on your own faces before a bulk run, and to watch the runs.
//!
//! An axum server and one page served from the binary (plain HTML, CSS and an ES module in `assets/`, embedded
//! with `include_str!`; no build step). A room above the model and the pipeline, like `daemon` and `cli`:
//! - [`engine`]: the model thread (encode once, cache the latents by content hash, decode per slider move);
//! - [`http`]: the API and the page; [`guard`]: who may call it (loopback, token, same origin); [`Options`]: what
//!   it runs with;
//! - [`runs`]: the Runs tab (the results topic tailed into `tools::status` tallies, the run records, thumbnails);
//! - [`client`]: a small HTTP/1.1 client for the latency benchmark (`glowd studio --bench`) and the tests.
pub mod client;
pub mod engine;
pub mod guard;
mod http;
mod options;
mod runs;

use crate::tools::ops::Services;
use std::net::SocketAddr;
use std::sync::Arc;

pub use engine::{Engine, EngineError};
pub use http::png;
pub use options::Options;

/// A running studio.
pub struct Studio {
    pub addr: SocketAddr,
    pub engine: Engine,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
    runs: Option<Arc<runs::Runs>>,
}

impl Studio {
    /// Stops serving and waits for the server task.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(r) = &self.runs {
            r.stop();
        }
        let _ = (&mut self.server).await;
    }

    /// Serves until the server fails or the process is stopped.
    pub async fn wait(mut self) {
        let _ = (&mut self.server).await;
    }
}

/// Loads the models, binds, and serves in the background on the current tokio runtime.
pub async fn start(opts: Options) -> Result<Studio, String> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&opts.listen)
        .await
        .map_err(|e| format!("--listen {}: {e}", opts.listen))?
        .collect();
    guard::check_listen(&addrs, &opts.listen, opts.token.is_some())?;
    if opts.models.is_empty() {
        return Err("no model to serve (give --model-dir, or a pipeline file with models)".into());
    }
    let roots = opts
        .roots
        .iter()
        .map(|r| r.canonicalize().map_err(|e| format!("--images {}: {e}", r.display())))
        .collect::<Result<Vec<_>, _>>()?;
    let (specs, device, threads, precision) = (opts.models.clone(), opts.device.clone(), opts.threads, opts.precision);
    let engine = tokio::task::spawn_blocking(move || Engine::start(specs, &device, threads, precision))
        .await
        .map_err(|e| e.to_string())??;
    let services = match &opts.pipeline {
        Some((path, file)) if file.s3.is_some() => Some(Arc::new(
            Services::from_file(file.clone(), path).await.map_err(|e| format!("{e:#}"))?,
        )),
        _ => None,
    };
    let runs = match (&services, opts.pipeline.as_ref().and_then(|(_, f)| f.kafka.clone())) {
        (Some(s), Some(kafka)) => Some(Arc::new(runs::Runs::start(s.clone(), kafka))),
        _ => None,
    };
    let state = http::AppState::new(opts.clone(), engine.clone(), roots, services, runs.clone());
    let router = http::router(Arc::new(state), Arc::new(guard::Guard::new(opts.token.as_deref())));
    let listener = tokio::net::TcpListener::bind(addrs[0]).await.map_err(|e| format!("--listen {}: {e}", opts.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
            let _ = stop_rx.await;
        });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "studio server stopped");
        }
    });
    Ok(Studio { addr, engine, stop: Some(stop_tx), server, runs })
}
