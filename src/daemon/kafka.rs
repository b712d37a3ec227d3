//! Kafka: the jobs source (a consumer polled from its own OS thread) and the reporter (results and DLQ topics).
//!
//! Delivery (RELIABILITY.md decisions 1–5): `enable.auto.commit=true` with `enable.auto.offset.store=false`; the
//! consumer thread owns an [`OffsetTracker`], registers every message it hands to the pipeline, and stores a
//! partition's offset only when that job and every earlier one are finished (the pipeline's ack sends the token
//! back over a channel). librdkafka's auto-commit then commits what was stored; a clean stop and every revocation
//! commit synchronously. The thread never blocks on the pipeline: a message the pipeline cannot take yet waits in
//! a small buffer, and when the pipeline stays full longer than `pause_grace_ms` (or a partition reaches its
//! in-flight cap) the partitions are paused while polling goes on, and resumed once the buffer has drained.
use super::config::KafkaSettings;
use crate::ack::{AckConfig, AckToken, OffsetTracker, TopicPartition};
use crate::job::SourcePosition;
use crate::pipeline::report::{DeadLetter, ReportError, Reporter};
use crate::pipeline::store::BoxFuture;
use crate::pipeline::Envelope;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

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
        c.set(key, value);
    }
    Ok(c)
}

/// Sets each property the pipeline file did not set.
fn defaults(c: &mut ClientConfig, pairs: &[(&str, &str)]) {
    for (k, v) in pairs {
        if c.get(k).is_none() {
            c.set(*k, *v);
        }
    }
}

/// Liveness and state shared with the HTTP endpoints and the daemon.
#[derive(Default)]
pub struct SourceState {
    /// Milliseconds since the Unix epoch of the last poll: liveness fails when it is old (a wedged poll loop).
    pub last_poll_ms: AtomicU64,
    pub assigned: AtomicU64,
    pub paused: AtomicU64,
    /// No broker reachable (librdkafka's all-brokers-down error, or a statistics report with none up): readiness
    /// fails until a report shows one up again. The consumer reconnects by itself meanwhile.
    pub brokers_down: AtomicBool,
    /// Partitions that have no committed offset while `auto.offset.reset=error` (an expired or deleted group):
    /// the daemon neither skips nor replays them on its own, it stays not ready and says which until an operator
    /// resets the offsets.
    pub reset_refused: Mutex<BTreeSet<TopicPartition>>,
    /// An error the daemon cannot recover from by waiting (wrong credentials, a certificate that does not verify):
    /// the daemon drains what it has and exits non-zero with this message.
    pub fatal: std::sync::OnceLock<String>,
}

impl SourceState {
    /// Why the consumer cannot do its work now, for `/readyz`; `None` when it can.
    pub fn not_ready_reason(&self) -> Option<String> {
        if let Some(f) = self.fatal.get() {
            return Some(format!("kafka: {f}"));
        }
        let refused = self.reset_refused.lock().unwrap_or_else(|p| p.into_inner());
        if !refused.is_empty() {
            let list: Vec<String> = refused.iter().map(|tp| tp.to_string()).collect();
            return Some(format!(
                "kafka: no committed offset and auto.offset.reset=error for {} (reset the group's offsets)",
                list.join(", ")
            ));
        }
        drop(refused);
        if self.brokers_down.load(Ordering::Relaxed) {
            return Some("kafka: no broker reachable".into());
        }
        None
    }

    pub fn seconds_since_poll(&self) -> f64 {
        let last = self.last_poll_ms.load(Ordering::Relaxed);
        (now_ms().saturating_sub(last)) as f64 / 1000.0
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

struct Context {
    tracker: Arc<Mutex<OffsetTracker>>,
    state: Arc<SourceState>,
}

impl ClientContext for Context {
    /// All-brokers-down fails readiness until a broker is back. An authentication or TLS failure (wrong password,
    /// a password rotated under the running daemon, a certificate that does not verify) is not mended by waiting:
    /// it sets `state.fatal`, and the daemon drains and exits non-zero with it. Transport errors (a broker
    /// restarting, a dropped connection) are only logged: librdkafka reconnects.
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown) {
            if !self.state.brokers_down.swap(true, Ordering::Relaxed) {
                tracing::warn!(%reason, "kafka: no broker reachable (not ready until one is)");
            }
        } else if let Some(fatal) = fatal_error(&error, reason, None) {
            if self.state.fatal.set(fatal.clone()).is_ok() {
                tracing::error!(error = %fatal, "kafka: fatal client error");
            } else {
                tracing::debug!(error = %fatal, "kafka: fatal client error (again)");
            }
        } else {
            tracing::error!(error = %error, %reason, "kafka client error");
        }
    }

    fn stats(&self, stats: rdkafka::Statistics) {
        let up = stats.brokers.values().filter(|b| b.state == "UP").count();
        if self.state.brokers_down.swap(up == 0, Ordering::Relaxed) && up > 0 {
            tracing::info!(brokers_up = up, "kafka: broker reachable again");
        }
        for (topic, t) in &stats.topics {
            for (p, part) in &t.partitions {
                if *p >= 0 && part.consumer_lag >= 0 {
                    metrics::gauge!("glowd_consumer_lag", "topic" => topic.clone(), "partition" => p.to_string())
                        .set(part.consumer_lag as f64);
                }
            }
        }
    }
}

impl ConsumerContext for Context {
    /// Runs on the polling thread inside `poll`. On revocation: commit, synchronously, what is finished of each
    /// revoked partition, and fence its jobs still in flight (their late acks are ignored; the next owner redoes
    /// them). On a lost assignment nothing is committed.
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut tracker = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let lost = consumer.assignment_lost();
                let mut commit = TopicPartitionList::new();
                for e in tpl.elements() {
                    let tp = TopicPartition::new(e.topic(), e.partition());
                    if lost {
                        if let Some(n) = tracker.lose(&tp) {
                            tracing::warn!(partition = %tp, abandoned = n, "partition lost: nothing committed");
                        }
                        continue;
                    }
                    if let Some(r) = tracker.revoke(&tp) {
                        if let Some(w) = r.commit {
                            let _ = commit.add_partition_offset(e.topic(), e.partition(), Offset::Offset(w));
                        }
                        tracing::info!(partition = %tp, commit = ?r.commit, abandoned = r.abandoned.len(), "partition revoked");
                    }
                }
                if commit.count() > 0 {
                    if let Err(e) =
                        consumer.store_offsets(&commit).and_then(|_| consumer.commit(&commit, CommitMode::Sync))
                    {
                        tracing::warn!(error = %e, "commit on revocation failed");
                    }
                }
            }
            Rebalance::Assign(tpl) => {
                for e in tpl.elements() {
                    tracker.assign(TopicPartition::new(e.topic(), e.partition()));
                    tracing::info!(topic = e.topic(), partition = e.partition(), "partition assigned");
                }
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }

    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, _offsets: &TopicPartitionList) {
        match result {
            Ok(()) => metrics::counter!("glowd_commits_total", "outcome" => "ok").increment(1),
            Err(e) => {
                metrics::counter!("glowd_commits_total", "outcome" => "error").increment(1);
                tracing::debug!(error = %e, "commit");
            }
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
fn fatal_error(error: &rdkafka::error::KafkaError, reason: &str, sasl: Option<&str>) -> Option<String> {
    use rdkafka::types::RDKafkaErrorCode as C;
    let code = error.rdkafka_error_code()?;
    let (broker, detail) = broker_of(reason);
    match code {
        C::Authentication | C::SaslAuthenticationFailed | C::UnsupportedSASLMechanism | C::IllegalSASLState => {
            let sasl = sasl.map(|s| format!(" ({s})")).unwrap_or_else(|| " (SASL)".into());
            Some(format!("authentication failed{sasl} for {broker}: {detail}"))
        }
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

/// Control of the consumer thread.
pub struct KafkaSource {
    thread: Option<std::thread::JoinHandle<()>>,
    /// Stop handing messages to the pipeline (SIGTERM); keep polling and storing.
    intake: Arc<AtomicBool>,
    /// Store the last completions, commit, leave the group, end the thread.
    finish: Arc<AtomicBool>,
    pub state: Arc<SourceState>,
}

impl KafkaSource {
    /// Subscribes and starts the polling thread, which hands envelopes to `jobs`.
    pub fn start(
        k: &KafkaSettings,
        ack_config: AckConfig,
        jobs: mpsc::Sender<Envelope>,
    ) -> Result<KafkaSource, String> {
        let tracker = Arc::new(Mutex::new(OffsetTracker::new(ack_config)));
        let state = Arc::new(SourceState::default());
        let mut config = client_config(k)?;
        config.set("group.id", &k.group).set("enable.auto.commit", "true").set("enable.auto.offset.store", "false");
        // KIP-848 (`group.protocol=consumer`): the broker assigns, incrementally; a client-side assignor is then
        // refused by librdkafka, so the classic protocol's cooperative-sticky default applies to it alone.
        if !config.get("group.protocol").is_some_and(|p| p.eq_ignore_ascii_case("consumer")) {
            defaults(&mut config, &[("partition.assignment.strategy", "cooperative-sticky")]);
        }
        defaults(
            &mut config,
            &[
                ("auto.offset.reset", "earliest"),
                // Bounded prefetch: memory does not grow with the backlog.
                ("queued.max.messages.kbytes", "4096"),
                ("auto.commit.interval.ms", "1000"),
                ("statistics.interval.ms", "5000"),
            ],
        );
        let consumer: BaseConsumer<Context> = config
            .create_with_context(Context { tracker: tracker.clone(), state: state.clone() })
            .map_err(|e| format!("kafka consumer: {e}"))?;
        consumer.subscribe(&[&k.jobs_topic]).map_err(|e| format!("subscribe {}: {e}", k.jobs_topic))?;
        let intake = Arc::new(AtomicBool::new(true));
        let finish = Arc::new(AtomicBool::new(false));
        let (ack_tx, ack_rx) = std::sync::mpsc::channel::<AckToken>();
        let poller = Poller {
            consumer,
            tracker,
            jobs,
            ack_tx,
            ack_rx,
            pending: VecDeque::new(),
            buffer: k.buffer.max(1),
            grace: Duration::from_millis(k.pause_grace_ms),
            full_since: None,
            paused: BTreeSet::new(),
            intake: intake.clone(),
            finish: finish.clone(),
            state: state.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("glowd-kafka-poll".into())
            .spawn(move || poller.run())
            .map_err(|e| e.to_string())?;
        Ok(KafkaSource { thread: Some(thread), intake, finish, state })
    }

    /// Stops handing new messages to the pipeline; buffered ones are dropped unacknowledged (redelivered later).
    pub fn stop_intake(&self) {
        self.intake.store(false, Ordering::SeqCst);
    }

    /// After the pipeline has drained: store the final completions, commit synchronously, leave the group.
    pub fn finish(mut self) {
        self.stop_intake();
        self.finish.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        self.intake.store(false, Ordering::SeqCst);
        self.finish.store(true, Ordering::SeqCst);
    }
}

struct Poller {
    consumer: BaseConsumer<Context>,
    tracker: Arc<Mutex<OffsetTracker>>,
    jobs: mpsc::Sender<Envelope>,
    ack_tx: std::sync::mpsc::Sender<AckToken>,
    ack_rx: std::sync::mpsc::Receiver<AckToken>,
    /// Fetched, registered, not yet taken by the pipeline.
    pending: VecDeque<(AckToken, Envelope)>,
    buffer: usize,
    grace: Duration,
    full_since: Option<Instant>,
    paused: BTreeSet<TopicPartition>,
    intake: Arc<AtomicBool>,
    finish: Arc<AtomicBool>,
    state: Arc<SourceState>,
}

impl Poller {
    fn run(mut self) {
        tracing::info!("kafka consumer polling");
        loop {
            self.state.last_poll_ms.store(now_ms(), Ordering::Relaxed);
            self.store_completions();
            if self.finish.load(Ordering::SeqCst) {
                break;
            }
            if !self.intake.load(Ordering::SeqCst) && !self.pending.is_empty() {
                // Never handed over: not processed, so not acknowledged; their offsets stay uncommitted.
                self.pending.clear();
            }
            self.hand_over();
            self.backpressure();
            match self.consumer.poll(Duration::from_millis(50)) {
                None => {}
                Some(Err(e)) if e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::AutoOffsetReset) => {
                    self.refuse_offset_reset(&e);
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "kafka poll error");
                    metrics::counter!("glowd_kafka_errors_total").increment(1);
                }
                Some(Ok(m)) => {
                    // A record arrived, so a broker is reachable (also when statistics are switched off).
                    self.state.brokers_down.store(false, Ordering::Relaxed);
                    let tp = TopicPartition::new(m.topic(), m.partition());
                    let registered = self.tracker.lock().unwrap_or_else(|p| p.into_inner()).register(&tp, m.offset());
                    match registered {
                        Ok(token) => {
                            let source = SourcePosition {
                                topic: m.topic().to_string(),
                                partition: m.partition(),
                                offset: m.offset(),
                            };
                            let tx = self.ack_tx.clone();
                            let t = token.clone();
                            let ack: crate::pipeline::Ack = Box::new(move || {
                                let _ = tx.send(t);
                            });
                            let payload = m.payload().unwrap_or_default().to_vec();
                            metrics::counter!("glowd_messages_total").increment(1);
                            let traceparent = m.headers().and_then(|h| {
                                h.iter().find(|x| x.key.eq_ignore_ascii_case("traceparent")).and_then(|x| x.value)
                            });
                            let envelope = Envelope::new(payload, Some(source), Some(ack)).with_traceparent(traceparent);
                            self.pending.push_back((token, envelope));
                        }
                        Err(e) => tracing::warn!(error = %e, "message not registered (skipped until redelivered)"),
                    }
                }
            }
        }
        self.close();
    }

    /// `auto.offset.reset=error` and a partition without a committed offset (the group's offsets expired, or it
    /// was deleted): librdkafka stops fetching that partition. The error names no partition, so the assignment's
    /// committed offsets say which ones; they are listed in `/readyz` and in `glowd_offset_reset_refused` until an
    /// operator resets the group's offsets (`kafka-consumer-groups.sh --reset-offsets`) and the daemon restarts.
    fn refuse_offset_reset(&mut self, e: &rdkafka::error::KafkaError) {
        metrics::counter!("glowd_kafka_errors_total").increment(1);
        let committed = match self.consumer.committed(Duration::from_secs(10)) {
            Ok(c) => c,
            Err(ce) => {
                tracing::error!(error = %e, committed_error = %ce, "auto.offset.reset=error: offsets lost, partitions unknown");
                return;
            }
        };
        let mut refused = self.state.reset_refused.lock().unwrap_or_else(|p| p.into_inner());
        for el in committed.elements() {
            if matches!(el.offset(), Offset::Offset(_)) {
                continue;
            }
            let tp = TopicPartition::new(el.topic(), el.partition());
            if refused.insert(tp.clone()) {
                tracing::error!(partition = %tp, error = %e,
                    "no committed offset and auto.offset.reset=error: not consuming this partition until its offsets are reset");
                metrics::gauge!("glowd_offset_reset_refused", "topic" => el.topic().to_string(), "partition" => el.partition().to_string())
                    .set(1.0);
            }
        }
    }

    /// Completions → tracker → `store_offsets` of every watermark that moved.
    fn store_completions(&mut self) {
        let mut tracker = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
        let mut any = false;
        while let Ok(token) = self.ack_rx.try_recv() {
            tracker.complete(&token);
            any = true;
        }
        if !any {
            return;
        }
        let advanced = tracker.take_advanced();
        // Partitions revoked meanwhile are not in the tracker any more, so nothing is stored for them.
        let assigned: BTreeSet<TopicPartition> = tracker.assigned().into_iter().collect();
        drop(tracker);
        let mut tpl = TopicPartitionList::new();
        for (tp, w) in advanced {
            if assigned.contains(&tp) {
                let _ = tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(w));
            }
        }
        if tpl.count() > 0 {
            if let Err(e) = self.consumer.store_offsets(&tpl) {
                tracing::warn!(error = %e, "store_offsets failed");
            }
        }
    }

    /// Moves buffered messages into the pipeline's channel without blocking. Messages of partitions revoked since
    /// they were fetched are dropped.
    fn hand_over(&mut self) {
        if !self.intake.load(Ordering::SeqCst) {
            return;
        }
        let tracker = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
        self.pending.retain(|(t, _)| tracker.generation(&t.tp) == Some(t.generation));
        drop(tracker);
        while let Some((token, envelope)) = self.pending.pop_front() {
            match self.jobs.try_send(envelope) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(envelope)) => {
                    self.pending.push_front((token, envelope));
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.pending.clear();
                    break;
                }
            }
        }
    }

    /// Pauses every assigned partition when the buffer stays non-empty past the grace period or is full, or
    /// when intake is stopped; pauses a partition at its in-flight cap; resumes (with hysteresis: an empty buffer
    /// and the partition under half its cap) otherwise.
    fn backpressure(&mut self) {
        let tracker = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
        let assigned = tracker.assigned();
        let cap = tracker.config().max_in_flight_per_partition;
        let stopping = !self.intake.load(Ordering::SeqCst);
        if self.pending.is_empty() {
            self.full_since = None;
        } else if self.full_since.is_none() {
            self.full_since = Some(Instant::now());
        }
        let overloaded =
            self.pending.len() >= self.buffer || self.full_since.is_some_and(|t| t.elapsed() >= self.grace);
        let mut to_pause = Vec::new();
        let mut to_resume = Vec::new();
        for tp in &assigned {
            let in_flight = tracker.in_flight(tp);
            let want_paused = stopping || overloaded || in_flight >= cap;
            let may_resume = !stopping && self.pending.is_empty() && in_flight < (cap / 2).max(1);
            if want_paused && !self.paused.contains(tp) {
                to_pause.push(tp.clone());
            } else if self.paused.contains(tp) && may_resume {
                to_resume.push(tp.clone());
            }
        }
        drop(tracker);
        self.paused.retain(|tp| assigned.contains(tp));
        let tpl_of = |tps: &[TopicPartition]| {
            let mut tpl = TopicPartitionList::new();
            for tp in tps {
                tpl.add_partition(&tp.topic, tp.partition);
            }
            tpl
        };
        if !to_pause.is_empty() {
            match self.consumer.pause(&tpl_of(&to_pause)) {
                Ok(()) => {
                    if stopping {
                        tracing::info!(partitions = to_pause.len(), "paused (stopping)");
                    } else {
                        tracing::info!(partitions = to_pause.len(), "paused (pipeline full)");
                    }
                    self.paused.extend(to_pause);
                }
                Err(e) => tracing::warn!(error = %e, "pause failed"),
            }
        }
        if !to_resume.is_empty() {
            match self.consumer.resume(&tpl_of(&to_resume)) {
                Ok(()) => {
                    tracing::info!(partitions = to_resume.len(), "resumed");
                    for tp in &to_resume {
                        self.paused.remove(tp);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "resume failed"),
            }
        }
        self.state.assigned.store(assigned.len() as u64, Ordering::Relaxed);
        self.state.paused.store(self.paused.len() as u64, Ordering::Relaxed);
        metrics::gauge!("glowd_partitions_assigned").set(assigned.len() as f64);
        metrics::gauge!("glowd_partitions_paused").set(self.paused.len() as f64);
        metrics::gauge!("glowd_consumer_buffered").set(self.pending.len() as f64);
    }

    /// Final completions stored, the watermarks committed synchronously, the group left.
    fn close(mut self) {
        self.pending.clear();
        self.store_completions();
        let tracker = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
        let mut tpl = TopicPartitionList::new();
        for tp in tracker.assigned() {
            if let Some(w) = tracker.committable(&tp) {
                let _ = tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(w));
            }
        }
        drop(tracker);
        if tpl.count() > 0 {
            match self.consumer.commit(&tpl, CommitMode::Sync) {
                Ok(()) => tracing::info!(partitions = tpl.count(), "final commit"),
                Err(e) => tracing::warn!(error = %e, "final commit failed"),
            }
        }
        self.consumer.unsubscribe();
        // Serve the revocation callback of leaving the group.
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && self.consumer.assignment().map(|a| a.count() > 0).unwrap_or(false) {
            let _ = self.consumer.poll(Duration::from_millis(50));
        }
        tracing::info!("kafka consumer closed");
    }
}

/// Results and dead letters as Kafka records, each awaited until the broker acknowledges it (`acks=all`).
pub struct KafkaReporter {
    producer: FutureProducer,
    results_topic: String,
    dlq_topic: String,
}

impl KafkaReporter {
    pub fn new(k: &KafkaSettings) -> Result<KafkaReporter, String> {
        let mut config = client_config(k)?;
        defaults(
            &mut config,
            &[("acks", "all"), ("enable.idempotence", "true"), ("message.timeout.ms", "30000"), ("linger.ms", "5")],
        );
        let producer: FutureProducer = config.create().map_err(|e| format!("kafka producer: {e}"))?;
        Ok(KafkaReporter { producer, results_topic: k.results_topic.clone(), dlq_topic: k.dlq_topic.clone() })
    }
}

/// The DLQ record's headers (Kafka Connect's idea, glowd's names): why, where, and which job.
pub fn dead_letter_headers(l: &DeadLetter) -> Vec<(&'static str, String)> {
    let mut h = vec![
        ("glowd.error.kind", l.error.kind.clone()),
        ("glowd.error.message", l.error.message.clone()),
        ("glowd.error.stage", format!("{:?}", l.error.stage).to_lowercase()),
        ("glowd.attempts", l.attempts.to_string()),
    ];
    if let Some(id) = &l.job {
        h.push(("glowd.job.id", id.to_string()));
    }
    if let Some(t) = &l.traceparent {
        h.push(("traceparent", t.clone()));
    }
    if let Some(s) = &l.source {
        h.push(("glowd.source.topic", s.topic.clone()));
        h.push(("glowd.source.partition", s.partition.to_string()));
        h.push(("glowd.source.offset", s.offset.to_string()));
    }
    h
}

impl Reporter for KafkaReporter {
    fn result<'a>(&'a self, result: &'a crate::job::JobResult) -> BoxFuture<'a, Result<(), ReportError>> {
        Box::pin(async move {
            let payload = serde_json::to_vec(result).map_err(|e| ReportError(e.to_string()))?;
            let key = result.job.as_ref().map(|j| j.to_string()).unwrap_or_default();
            let record = FutureRecord::to(&self.results_topic).payload(&payload).key(&key);
            self.producer
                .send(record, Duration::from_secs(30))
                .await
                .map(|_| ())
                .map_err(|(e, _)| ReportError(format!("results topic {}: {e}", self.results_topic)))
        })
    }

    fn dead_letter<'a>(&'a self, l: &'a DeadLetter) -> BoxFuture<'a, Result<(), ReportError>> {
        Box::pin(async move {
            let mut headers = OwnedHeaders::new();
            for (k, v) in dead_letter_headers(l) {
                headers = headers.insert(Header { key: k, value: Some(v.as_bytes()) });
            }
            let key = l.job.as_ref().map(|j| j.to_string()).unwrap_or_default();
            let record = FutureRecord::to(&self.dlq_topic).payload(&l.payload).key(&key).headers(headers);
            self.producer
                .send(record, Duration::from_secs(30))
                .await
                .map(|_| ())
                .map_err(|(e, _)| ReportError(format!("DLQ topic {}: {e}", self.dlq_topic)))
        })
    }
}
