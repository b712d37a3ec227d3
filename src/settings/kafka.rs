//! The `[kafka]` table: brokers, group, topics, librdkafka properties, and the consumer's bounds.
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    /// `host:port,host:port`.
    pub brokers: String,
    pub group: String,
    pub jobs_topic: String,
    pub results_topic: String,
    pub dlq_topic: String,
    /// Static group membership (KIP-345): the consumer's `group.instance.id`, unique in the group and stable
    /// across restarts of the same instance (the Kubernetes manifests pass the pod's name: `"${POD_NAME}"`). A
    /// daemon that dies without leaving (SIGKILL, OOM kill) and comes back under the same id within
    /// `session.timeout.ms` takes its partitions back at once, with no rebalance; without it the group waits for
    /// the dead member's session to time out (45 s by default) before anyone consumes its partitions. A clean stop
    /// (SIGTERM) still leaves the group, so its partitions move at once; an instance that dies and never comes back
    /// under its id holds its partitions until its session times out. Two daemons with one id fence each other
    /// (the older one stops non-zero). Unset: a dynamic member.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// Extra librdkafka properties (`security.protocol`, `sasl.mechanism`, `ssl.ca.location`, …). The daemon's own
    /// delivery settings (`enable.auto.commit`, `enable.auto.offset.store`, `group.id`) cannot be overridden here.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// How long the pipeline may stay full before the consumer pauses its partitions (it keeps polling).
    #[serde(default = "default_pause_grace")]
    pub pause_grace_ms: u64,
    /// Messages the consumer thread holds (fetched, not yet taken by the pipeline) before it pauses at once.
    #[serde(default = "default_buffer")]
    pub buffer: usize,
    /// How long `glowd serve` waits at start-up, before it loads any model, for a broker to answer a metadata
    /// request for `jobs_topic` (default 15 s). When none has within this time, the daemon exits non-zero naming
    /// the last error; an authentication or TLS certificate failure ends the wait at once. Never ready before.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_seconds: f64,
}

/// Whether a librdkafka property holds a secret (`sasl.password`, `ssl.key.password`, `ssl.key.pem`,
/// `sasl.oauthbearer.client.secret`, …): such values never reach logs or error messages.
pub fn is_secret_property(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "secret", "ssl.key", "oauthbearer.config", "keystore"].iter().any(|s| k.contains(s))
}

/// Written by hand so `{:?}` of a config never prints a SASL or TLS secret (rust-rdkafka's own `ClientConfig`
/// printed `sasl.password` up to 0.38).
impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let properties: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(k, v)| (k.as_str(), if is_secret_property(k) { "<redacted>" } else { v.as_str() }))
            .collect();
        f.debug_struct("KafkaSettings")
            .field("brokers", &self.brokers)
            .field("group", &self.group)
            .field("jobs_topic", &self.jobs_topic)
            .field("results_topic", &self.results_topic)
            .field("dlq_topic", &self.dlq_topic)
            .field("instance_id", &self.instance_id)
            .field("properties", &properties)
            .field("pause_grace_ms", &self.pause_grace_ms)
            .field("buffer", &self.buffer)
            .field("connect_timeout_seconds", &self.connect_timeout_seconds)
            .finish()
    }
}

fn default_pause_grace() -> u64 {
    500
}
fn default_buffer() -> usize {
    64
}
fn default_connect_timeout() -> f64 {
    15.0
}
