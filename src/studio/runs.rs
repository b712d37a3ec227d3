//! The Runs tab: the results topic tailed from its beginning on a thread of its own into per-run tallies (the same
//! counting as `glowd status`, `tools::status`), the run records `glowd submit` wrote, and a few finished outputs.
use crate::settings::KafkaSettings;
use crate::tools::ops::{self, Services};
use crate::tools::status::Tallies;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A run record is fetched again after this long (a resubmission rewrites it).
const RECORD_TTL: Duration = Duration::from_secs(15);
/// Largest thumbnail fetched.
const MAX_THUMBNAIL_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Debug, Default)]
struct Tail {
    /// The last error of the tailing consumer, cleared by the next record.
    error: Option<String>,
    /// Every partition was read to its end once.
    caught_up: bool,
    records: u64,
}

pub struct Runs {
    services: Arc<Services>,
    tallies: Arc<Mutex<Tallies>>,
    tail: Arc<Mutex<Tail>>,
    records: tokio::sync::Mutex<HashMap<String, (Value, Instant)>>,
    stop: Arc<AtomicBool>,
}

impl Runs {
    pub fn start(services: Arc<Services>, kafka: KafkaSettings) -> Runs {
        let tallies = Arc::new(Mutex::new(Tallies::default()));
        let tail = Arc::new(Mutex::new(Tail::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (t, s, st) = (tallies.clone(), tail.clone(), stop.clone());
        let _ = std::thread::Builder::new().name("glowd-studio-results".into()).spawn(move || tail_results(&kafka, &t, &s, &st));
        Runs { services, tallies, tail, records: tokio::sync::Mutex::new(HashMap::new()), stop }
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    async fn record(&self, run: &str) -> Option<Value> {
        let mut records = self.records.lock().await;
        if let Some((v, at)) = records.get(run) {
            if at.elapsed() < RECORD_TTL {
                return Some(v.clone());
            }
        }
        match self.services.run_record(run).await {
            Ok(v) => {
                records.insert(run.to_string(), (v.clone(), Instant::now()));
                Some(v)
            }
            Err(e) => {
                tracing::debug!(run, error = %format!("{e:#}"), "studio: run record");
                None
            }
        }
    }

    /// Every run with a record: its counts, dead letters by reason, and thumbnails of finished outputs.
    pub async fn overview(&self) -> Value {
        let (error, caught_up, records_read) = {
            let t = self.tail.lock().expect("tail lock");
            (t.error.clone(), t.caught_up, t.records)
        };
        let mut runs: BTreeSet<String> = match self.services.runs().await {
            Ok(r) => r.into_iter().collect(),
            Err(e) => return json!({ "error": format!("listing the run records: {e:#}"), "runs": [] }),
        };
        // Runs that report results but whose record is gone still show.
        runs.extend(self.tallies.lock().expect("tallies lock").runs.keys().cloned());
        let mut out = Vec::new();
        for run in runs {
            let record = self.record(&run).await.unwrap_or(Value::Null);
            let images = record["images"].as_u64().unwrap_or(0) as usize;
            let tallies = self.tallies.lock().expect("tallies lock");
            let tally = tallies.runs.get(&run).cloned().unwrap_or_default();
            drop(tallies);
            let images = images.max(tally.reported());
            out.push(json!({
                "summary": tally.summary(&run, images),
                "prefix": record["prefix"],
                "job": record["job"],
                "dead_letters": tally.dead_letters(),
                "thumbnails": tally.thumbnails(),
            }));
        }
        json!({
            "runs": out,
            "results_topic": self.services.file.kafka.as_ref().map(|k| k.results_topic.clone()),
            "caught_up": caught_up,
            "records_read": records_read,
            "error": error,
        })
    }

    /// The bytes of a finished output, if a result named it (the page may show outputs, never any other object).
    pub async fn thumbnail(&self, key: &str) -> Result<Vec<u8>, String> {
        let named = self.tallies.lock().expect("tallies lock").runs.values().any(|t| t.thumbnails().iter().any(|k| k == key));
        if !named {
            return Err("not an output of a finished job".into());
        }
        ops::get(&self.services.s3, self.services.output_bucket(), key, MAX_THUMBNAIL_BYTES).await.map_err(|e| format!("{e:#}"))
    }
}

/// Reads the results topic from its beginning for as long as the studio runs, reconnecting after errors.
fn tail_results(kafka: &KafkaSettings, tallies: &Mutex<Tallies>, tail: &Mutex<Tail>, stop: &AtomicBool) {
    let topic = kafka.results_topic.clone();
    while !stop.load(Ordering::Relaxed) {
        let (consumer, partitions) = match ops::topic_reader(kafka, &topic, "studio") {
            Ok(c) => c,
            Err(e) => {
                tail.lock().expect("tail lock").error = Some(format!("{topic}: {e:#}"));
                std::thread::sleep(Duration::from_secs(2));
                continue;
            }
        };
        // A fresh reader starts from the beginning: count from scratch.
        *tallies.lock().expect("tallies lock") = Tallies::default();
        let mut at_end = BTreeSet::new();
        while !stop.load(Ordering::Relaxed) {
            match consumer.poll(Duration::from_millis(250)) {
                Some(Ok(m)) => {
                    tallies.lock().expect("tallies lock").add_payload(m.payload().unwrap_or_default());
                    let mut t = tail.lock().expect("tail lock");
                    t.records += 1;
                    t.error = None;
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                    at_end.insert(p);
                    if at_end.len() >= partitions.len() {
                        tail.lock().expect("tail lock").caught_up = true;
                    }
                }
                Some(Err(e)) => {
                    tail.lock().expect("tail lock").error = Some(format!("{topic}: {e}"));
                }
                None => {}
            }
        }
        consumer.unassign().ok();
    }
}
