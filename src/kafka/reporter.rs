//! The reporter: result records to the results topic, dead letters (with reason headers) to the DLQ topic.
use super::*;
use super::client::defaults;
use crate::settings::KafkaSettings;
use crate::pipeline::report::{DeadLetter, ReportError, Reporter};
use crate::pipeline::store::BoxFuture;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::time::Duration;

/// How long a record may wait for room in the producer's queue before the send fails (and the report is retried).
const QUEUE_TIMEOUT: Duration = Duration::from_secs(30);

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
            let mut headers = OwnedHeaders::new();
            for (k, v) in dead_letter_headers(l) {
                headers = headers.insert(Header { key: k, value: Some(v.as_bytes()) });
            }
            let key = l.job.as_ref().map(|j| j.to_string()).unwrap_or_default();
            let record = FutureRecord::to(&self.dlq_topic).payload(&l.payload).key(&key).headers(headers);
            self.producer
                .send(record, QUEUE_TIMEOUT)
                .await
                .map(|_| ())
                .map_err(|(e, _)| ReportError(format!("DLQ topic {}: {e}", self.dlq_topic)))
        })
    }
}
