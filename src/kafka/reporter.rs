//! The reporter: result records to the results topic, dead letters (with reason headers) to the DLQ topic.
use super::*;
use super::client::defaults;
use crate::settings::KafkaSettings;
use crate::pipeline::report::{DeadLetter, ReportError, Reporter};
use crate::pipeline::store::BoxFuture;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How long a record may wait for room in the producer's queue before the send fails (and the report is retried).
const QUEUE_TIMEOUT: Duration = Duration::from_secs(30);

/// librdkafka's default `message.max.bytes` (the producer's own cap on one record).
const PRODUCER_MAX_BYTES: usize = 1_000_000;
/// What a record costs beyond its key, value and headers, in a record batch of its own (batch header, record
/// varints), with room to spare: a dead letter is cut to leave this much.
const RECORD_OVERHEAD: usize = 512;
/// The header that marks a dead letter whose payload was cut to fit the DLQ topic.
pub const TRUNCATED_HEADER: &str = "glowd.payload.truncated";

/// Results and dead letters as Kafka records, each awaited until the broker acknowledges it (`acks=all`).
pub struct KafkaReporter {
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    results_topic: String,
    dlq_topic: String,
    /// The producer's `message.max.bytes`.
    producer_max: usize,
    /// The largest record the DLQ takes: the smaller of its topic's `max.message.bytes` and the producer's cap;
    /// 0 until learnt (at the first dead letter, and again whenever the DLQ refuses one as too large).
    dlq_max: AtomicUsize,
}

impl KafkaReporter {
    pub fn new(k: &KafkaSettings) -> Result<KafkaReporter, String> {
        let mut config = client_config(k)?;
        defaults(
            &mut config,
            &[("acks", "all"), ("enable.idempotence", "true"), ("message.timeout.ms", "30000"), ("linger.ms", "5")],
        );
        let producer: FutureProducer = config.create().map_err(|e| format!("kafka producer: {e}"))?;
        let admin: AdminClient<DefaultClientContext> = client_config(k)?.create().map_err(|e| format!("kafka admin: {e}"))?;
        let producer_max = config.get("message.max.bytes").and_then(|v| v.parse().ok()).unwrap_or(PRODUCER_MAX_BYTES);
        Ok(KafkaReporter {
            producer,
            admin,
            results_topic: k.results_topic.clone(),
            dlq_topic: k.dlq_topic.clone(),
            producer_max,
            dlq_max: AtomicUsize::new(0),
        })
    }

    /// Asks the broker for the DLQ topic's `max.message.bytes` and keeps the smaller of it and the producer's cap.
    /// When the broker cannot say, the producer's cap stands.
    async fn learn_dlq_max(&self) -> usize {
        let topic = [ResourceSpecifier::Topic(&self.dlq_topic)];
        let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
        let topic_max = match self.admin.describe_configs(topic.iter(), &options).await {
            Ok(results) => results.into_iter().flatten().find_map(|r| {
                r.get("max.message.bytes").and_then(|e| e.value.as_deref()).and_then(|v| v.parse::<usize>().ok())
            }),
            Err(e) => {
                tracing::warn!(error = %e, topic = %self.dlq_topic, "cannot read the DLQ topic's max.message.bytes");
                None
            }
        };
        let max = topic_max.map_or(self.producer_max, |t| t.min(self.producer_max));
        self.dlq_max.store(max, Ordering::Relaxed);
        max
    }
}

/// The payload a dead letter can carry within `max` bytes of record, with `overhead` taken by its key, headers and
/// framing: the whole payload when it fits, otherwise its first bytes and the value of [`TRUNCATED_HEADER`]
/// (`original N bytes, sha256 HEX`). `None` when not even an empty payload fits (the topic refuses every record:
/// an operator's matter, retried until it changes).
pub fn fit_dead_letter(payload: &[u8], overhead: usize, max: usize) -> Option<(&[u8], Option<String>)> {
    if payload.len() + overhead <= max {
        return Some((payload, None));
    }
    let digest: String = Sha256::digest(payload).iter().map(|b| format!("{b:02x}")).collect();
    let note = format!("original {} bytes, sha256 {digest}", payload.len());
    let room = max.checked_sub(overhead + TRUNCATED_HEADER.len() + note.len())?;
    Some((&payload[..room.min(payload.len())], Some(note)))
}

/// The DLQ record's headers (Kafka Connect's idea, glowd's names): why, where, and which job.
pub fn dead_letter_headers(l: &DeadLetter) -> Vec<(&'static str, String)> {
    let mut h = vec![
        ("glowd.error.kind", l.error.kind.as_str().to_string()),
        ("glowd.error.message", l.error.message.clone()),
        ("glowd.error.stage", l.error.stage.as_str().to_string()),
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
                .send(record, QUEUE_TIMEOUT)
                .await
                .map(|_| ())
                .map_err(|(e, _)| ReportError(format!("results topic {}: {e}", self.results_topic)))
        })
    }

    fn dead_letter<'a>(&'a self, l: &'a DeadLetter) -> BoxFuture<'a, Result<(), ReportError>> {
        Box::pin(async move {
            let key = l.job.as_ref().map(|j| j.to_string()).unwrap_or_default();
            let mut pairs = dead_letter_headers(l);
            let overhead = RECORD_OVERHEAD + key.len() + pairs.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
            let max = match self.dlq_max.load(Ordering::Relaxed) {
                0 => self.learn_dlq_max().await,
                known => known,
            };
            // A dead letter always fits: a message too large for the DLQ would otherwise be refused on every retry,
            // and its partition's offset would never move again.
            let Some((payload, note)) = fit_dead_letter(&l.payload, overhead, max) else {
                self.dlq_max.store(0, Ordering::Relaxed);
                return Err(ReportError(format!(
                    "DLQ topic {}: takes records of at most {max} bytes, too small for any dead letter",
                    self.dlq_topic
                )));
            };
            if let Some(note) = note {
                metrics::counter!("glowd_dead_letters_truncated_total").increment(1);
                tracing::warn!(job = %key, %note, kept = payload.len(), "dead letter cut to fit the DLQ topic");
                pairs.push((TRUNCATED_HEADER, note));
            }
            let mut headers = OwnedHeaders::new();
            for (k, v) in &pairs {
                headers = headers.insert(Header { key: *k, value: Some(v.as_bytes()) });
            }
            let record = FutureRecord::to(&self.dlq_topic).payload(payload).key(&key).headers(headers);
            match self.producer.send(record, QUEUE_TIMEOUT).await {
                Ok(_) => Ok(()),
                Err((e, _)) => {
                    if matches!(&e, KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)) {
                        // The topic's limit changed (or was never learnt right): learn it again before the retry.
                        self.dlq_max.store(0, Ordering::Relaxed);
                    }
                    Err(ReportError(format!("DLQ topic {}: {e}", self.dlq_topic)))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_is_cut_to_fit_and_says_what_it_was() {
        let payload = vec![b'x'; 1_000_100];
        let (kept, note) = fit_dead_letter(&payload, 600, 1_000_000).unwrap();
        let note = note.expect("cut");
        assert!(kept.len() + 600 + TRUNCATED_HEADER.len() + note.len() <= 1_000_000);
        assert!(kept.len() > 990_000, "kept {}", kept.len());
        let digest: String = Sha256::digest(&payload).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(note, format!("original 1000100 bytes, sha256 {digest}"));
        assert_eq!(fit_dead_letter(b"small", 600, 1_000_000), Some((&b"small"[..], None)));
        // A topic that takes nothing: no record can be made, the caller retries until an operator changes it.
        assert_eq!(fit_dead_letter(b"small", 600, 1), None);
    }
}
