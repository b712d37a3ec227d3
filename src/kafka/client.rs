//! Client settings shared by the consumer and the producer, librdkafka's fatal errors in one line, and the start-up broker check.
use crate::settings::KafkaSettings;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::ClientContext;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Properties the daemon sets itself; a pipeline file may not override them.
const OWN_PROPERTIES: [&str; 4] = ["group.id", "enable.auto.commit", "enable.auto.offset.store", "bootstrap.servers"];

/// Builds a client config from the pipeline file. Never `Debug`-print it: it may hold `sasl.password`.
pub fn client_config(k: &KafkaSettings) -> Result<ClientConfig, String> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.brokers);
    for (key, value) in &k.properties {
        if OWN_PROPERTIES.contains(&key.as_str()) {
            return Err(format!("kafka.properties.{key}: set by the daemon, cannot be overridden"));
        }
        if key == "group.instance.id" {
            return Err(format!("kafka.properties.{key}: set kafka.instance_id instead"));
        }
        c.set(key, value);
    }
    Ok(c)
}

/// Sets each property the pipeline file did not set.
pub(super) fn defaults(c: &mut ClientConfig, pairs: &[(&str, &str)]) {
    for (k, v) in pairs {
        if c.get(k).is_none() {
            c.set(*k, *v);
        }
    }
}

/// Splits librdkafka's `sasl_ssl://127.0.0.1:9093/bootstrap: message` into (`127.0.0.1:9093`, `message`), and
/// `GroupCoordinator: 127.0.0.1:9093: message` into (`127.0.0.1:9093 (group coordinator)`, `message`).
fn broker_of(reason: &str) -> (String, &str) {
    match reason.split_once(": ") {
        Some((head, rest)) if head.contains("://") => {
            let addr = head.split_once("://").map_or(head, |x| x.1);
            let addr = addr.rsplit_once('/').map_or(addr, |x| x.0);
            (addr.to_string(), rest)
        }
        Some((role, rest)) if !role.contains([' ', ':']) => match rest.split_once(": ") {
            Some((addr, detail)) if addr.contains(':') && !addr.contains(' ') => {
                let role = if role == "GroupCoordinator" { "group coordinator" } else { role };
                (format!("{addr} ({role})"), detail)
            }
            _ => ("the broker".to_string(), reason),
        },
        _ => ("the broker".to_string(), reason),
    }
}

/// The one-line message of an error that waiting cannot mend (authentication refused, TLS handshake or
/// certificate verification failed), or `None` for any other error. `sasl` names the mechanism (and user) when
/// known. librdkafka's reasons never hold the password.
pub(super) fn fatal_error(error: &rdkafka::error::KafkaError, reason: &str, sasl: Option<&str>) -> Option<String> {
    use rdkafka::types::RDKafkaErrorCode as C;
    let code = error.rdkafka_error_code()?;
    let (broker, detail) = broker_of(reason);
    match code {
        C::Authentication | C::SaslAuthenticationFailed | C::UnsupportedSASLMechanism | C::IllegalSASLState => {
            let sasl = sasl.map(|s| format!(" ({s})")).unwrap_or_else(|| " (SASL)".into());
            Some(format!("authentication failed{sasl} for {broker}: {detail}"))
        }
        // librdkafka's fatal errors leave the client unusable: for a consumer, another one with the same
        // group.instance.id fenced it (static membership), which waiting cannot mend.
        C::Fatal => Some(format!("fatal client error from {broker}: {detail}")),
        C::SSL => {
            let lower = detail.to_ascii_lowercase();
            if lower.contains("verif") || lower.contains("certificate") {
                Some(format!(
                    "TLS certificate verification failed for {broker} (does ssl.ca.location hold the CA that signed \
                     the broker's certificate, and does the certificate name the host in `brokers`?): {detail}"
                ))
            } else {
                Some(format!("TLS handshake failed for {broker}: {detail}"))
            }
        }
        _ => None,
    }
}

/// What the start-up check saw: the first fatal error, the last other one.
#[derive(Default)]
struct ProbeContext {
    sasl: Option<String>,
    fatal: std::sync::OnceLock<String>,
    last: Mutex<Option<String>>,
}

impl ClientContext for ProbeContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if let Some(f) = fatal_error(&error, reason, self.sasl.as_deref()) {
            let _ = self.fatal.set(f);
        } else if error.rdkafka_error_code() != Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown) {
            tracing::debug!(error = %error, %reason, "kafka start-up check");
            *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.to_string());
        }
    }
}

impl ConsumerContext for ProbeContext {}

/// Start-up check, before anything else is loaded: with the consumer's own settings, a broker must answer a
/// metadata request for the jobs topic within `kafka.connect_timeout_seconds`. Blocking (run it in
/// `spawn_blocking`). `Err` is one line naming the cause: authentication refused and TLS failures as soon as
/// librdkafka reports them, otherwise "no broker reachable" with the last error seen. A SASL_SSL client never
/// falls back to plaintext, and a plaintext one cannot talk to a TLS listener, so either mismatch ends here.
pub fn check_brokers(k: &KafkaSettings) -> Result<(), String> {
    let secs = k.connect_timeout_seconds;
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!("kafka.connect_timeout_seconds = {secs}: must be a positive number of seconds"));
    }
    let timeout = Duration::from_secs_f64(secs);
    let mut config = client_config(k)?;
    config.set("group.id", &k.group);
    let protocol = config.get("security.protocol").unwrap_or("plaintext").to_ascii_lowercase();
    let sasl = protocol.starts_with("sasl").then(|| {
        let mech = config.get("sasl.mechanism").unwrap_or("GSSAPI").to_string();
        match config.get("sasl.username") {
            Some(u) => format!("SASL {mech}, user {u:?}"),
            None => format!("SASL {mech}"),
        }
    });
    let consumer: BaseConsumer<ProbeContext> = config
        .create_with_context(ProbeContext { sasl, ..Default::default() })
        .map_err(|e| format!("kafka consumer: {e}"))?;
    let t0 = Instant::now();
    loop {
        // Serves the client's error events (they reach ProbeContext::error from here).
        let _ = consumer.poll(Duration::from_millis(50));
        if let Some(f) = consumer.context().fatal.get() {
            return Err(f.clone());
        }
        let left = timeout.saturating_sub(t0.elapsed());
        if left.is_zero() {
            let last = consumer.context().last.lock().unwrap_or_else(|p| p.into_inner()).clone();
            return Err(format!(
                "no broker reachable at {} within {secs} s (is a broker up there, and does its listener speak \
                 security.protocol={protocol}?){}",
                k.brokers,
                last.map(|l| format!(": last error: {l}")).unwrap_or_default()
            ));
        }
        match consumer.fetch_metadata(Some(&k.jobs_topic), left.min(Duration::from_millis(500))) {
            Ok(md) => {
                // A fatal error may have come with the answer's connection (another broker of the list).
                let _ = consumer.poll(Duration::ZERO);
                if let Some(f) = consumer.context().fatal.get() {
                    return Err(f.clone());
                }
                match md.topics().iter().find(|t| t.name() == k.jobs_topic).and_then(|t| t.error()) {
                    Some(e) => tracing::warn!(topic = %k.jobs_topic, error = %rdkafka::types::RDKafkaErrorCode::from(e),
                        "kafka: broker answered, but the jobs topic is not available (yet)"),
                    None => tracing::info!(brokers = md.brokers().len(), protocol = %protocol,
                        elapsed_ms = t0.elapsed().as_millis() as u64, "kafka: broker answered"),
                }
                return Ok(());
            }
            Err(e) => tracing::trace!(error = %e, "kafka start-up check: no answer yet"),
        }
    }
}
