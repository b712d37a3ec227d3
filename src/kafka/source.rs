//! The jobs source: a consumer polled from its own OS thread, with offset tracking, pausing and rebalances.
use super::*;
use super::client::{defaults, fatal_error};
use crate::settings::KafkaSettings;
use crate::kafka::ack::{AckConfig, AckToken, OffsetTracker, TopicPartition};
use crate::job::SourcePosition;
use crate::pipeline::Envelope;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How long closing serves the revocation callback of leaving the group and waits for the leave to be sent.
const LEAVE_WAIT: Duration = Duration::from_secs(3);
/// After the leave is queued, how long closing keeps the client alive for it to be written.
const LEAVE_FLUSH: Duration = Duration::from_millis(200);

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
    /// the daemon drains what it has and exits non-zero with this message. Set once, through [`Self::set_fatal`],
    /// which also cancels `fatal_seen` so the daemon wakes at once instead of polling for it.
    fatal: std::sync::OnceLock<String>,
    fatal_seen: tokio_util::sync::CancellationToken,
}

impl SourceState {
    /// Records the first fatal error; returns false when one was already recorded.
    pub fn set_fatal(&self, message: String) -> bool {
        let first = self.fatal.set(message).is_ok();
        self.fatal_seen.cancel();
        first
    }

    /// The fatal error, once there is one.
    pub fn fatal(&self) -> Option<&str> {
        self.fatal.get().map(String::as_str)
    }

    /// Resolves once a fatal error has been recorded.
    pub async fn fatal_error(&self) -> String {
        self.fatal_seen.cancelled().await;
        self.fatal().unwrap_or_default().to_string()
    }

    /// Why the consumer cannot do its work now, for `/readyz`; `None` when it can.
    pub fn not_ready_reason(&self) -> Option<String> {
        if let Some(f) = self.fatal() {
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
            if self.state.set_fatal(fatal.clone()) {
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

    /// After an assignment: librdkafka keeps the application's pause flag of a partition across unassign and
    /// assign, while the poller forgets the pauses of partitions it no longer owns. A partition paused under backlog,
    /// revoked and later assigned back would never be fetched again; so what is assigned starts resumed, and the
    /// poller pauses it again if the backlog still says so.
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            if tpl.count() > 0 {
                if let Err(e) = consumer.resume(tpl) {
                    tracing::warn!(error = %e, "resuming the assigned partitions failed");
                }
            }
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
        if let Some(id) = &k.instance_id {
            let id = id.trim();
            if id.is_empty() {
                return Err("kafka.instance_id is empty (unset it for a dynamic member)".into());
            }
            config.set("group.instance.id", id);
            tracing::info!(instance_id = id, "kafka: static group membership");
        }
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
                    let taken = self.tracker.lock().unwrap_or_else(|p| p.into_inner()).take(&tp, m.offset());
                    match taken {
                        Ok((token, restarted)) => {
                            if restarted {
                                tracing::warn!(partition = %tp, offset = m.offset(),
                                    "the consumer went back within the assignment: taking the jobs from here again");
                                metrics::counter!("glowd_seek_backs_total").increment(1);
                            }
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
                        Err(e) => tracing::warn!(error = %e, "message not taken (not assigned here)"),
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
        // Serve the revocation callback of leaving the group, then wait for the leave itself: librdkafka sends it
        // once the unassignment is done, and a static member (`kafka.instance_id`) destroyed before that never
        // leaves (KIP-345: a static member does not leave on close), holding its partitions until its session
        // times out. A member id of "" says the leave is on its way.
        let deadline = Instant::now() + LEAVE_WAIT;
        while Instant::now() < deadline
            && (self.consumer.assignment().map(|a| a.count() > 0).unwrap_or(false) || !member_id(&self.consumer).is_empty())
        {
            let _ = self.consumer.poll(Duration::from_millis(50));
        }
        let left = member_id(&self.consumer).is_empty();
        // The LeaveGroup request is queued for the coordinator's connection: a moment for it to be written.
        let flush = Instant::now() + LEAVE_FLUSH;
        while Instant::now() < flush {
            let _ = self.consumer.poll(Duration::from_millis(50));
        }
        tracing::info!(left, "kafka consumer closed");
    }
}

/// The consumer's group member id: "" before it has joined and once it has left.
fn member_id<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> String {
    let rk = consumer.client().native_ptr();
    // SAFETY: `rk` is the live client; rd_kafka_memberid returns NULL or a NUL-terminated copy that the caller owns
    // and frees with rd_kafka_mem_free.
    unsafe {
        let p = rdkafka::bindings::rd_kafka_memberid(rk);
        if p.is_null() {
            return String::new();
        }
        let id = std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned();
        rdkafka::bindings::rd_kafka_mem_free(rk, p.cast());
        id
    }
}
