//! The `[http]` table: where `/metrics`, `/healthz` and `/readyz` listen, and the liveness bound.
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// `/metrics`, `/healthz`, `/readyz`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// `/healthz` fails once the Kafka poll loop has not turned for this long (a wedged loop), so the orchestrator
    /// restarts the process. The loop polls with a 50-ms timeout even with nothing to read, so the default leaves
    /// room for a long stop-the-world pause without restarting a healthy daemon.
    #[serde(default = "default_max_poll_silence")]
    pub max_poll_silence_seconds: f64,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings { listen: default_listen(), max_poll_silence_seconds: default_max_poll_silence() }
    }
}

fn default_listen() -> String {
    "127.0.0.1:9464".into()
}

fn default_max_poll_silence() -> f64 {
    60.0
}
