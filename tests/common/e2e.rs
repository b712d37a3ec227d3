//! The plain dev stack (`scripts/dev-stack up`: Kafka 4.1.1 in KRaft mode and MinIO on 127.0.0.1) as the
//! `tests/e2e_*.rs` files use it: its variables, topics, objects, the daemon's pipeline file, producing jobs and
//! reading results, committed offsets, and the mixed workload of the crash, rebalance, outage and chaos tests.
//!
//! Each test uses its own topics, consumer group and key prefixes, so tests (and reruns) never see each other's
//! records.
use super::daemon::{self, job, runtime, Daemon, Names, Record};
use aws_sdk_s3::primitives::ByteStream;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The dev stack's `scripts/dev-stack env`, started once per test binary (idempotent).
pub fn stack() -> &'static HashMap<String, String> {
    static STACK: OnceLock<HashMap<String, String>> = OnceLock::new();
    STACK.get_or_init(|| daemon::dev_stack(&[("up", "env")]))
}

/// Runs `scripts/dev-stack ARGS` (`stop-s3`, `start-kafka`, `restart-kafka --kill`, …); fails the test if it fails.
pub fn dev_stack_command(args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/dev-stack");
    let out = Command::new(&script).args(args).output().unwrap();
    assert!(out.status.success(), "dev-stack {}:\n{}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

pub fn names(test: &str) -> Names {
    Names::new("e2e", test)
}

pub fn brokers() -> String {
    stack()["KAFKA_BROKERS"].clone()
}

pub fn bucket() -> String {
    stack()["S3_BUCKET"].clone()
}

/// A client of the dev stack's broker (connection settings only).
pub fn kafka() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers());
    c
}

pub async fn create_topics(n: &Names) {
    let admin: AdminClient<DefaultClientContext> = kafka().create().unwrap();
    let topics = [
        NewTopic::new(&n.jobs, 3, TopicReplication::Fixed(1)),
        NewTopic::new(&n.results, 1, TopicReplication::Fixed(1)),
        NewTopic::new(&n.dlq, 1, TopicReplication::Fixed(1)),
    ];
    for r in admin.create_topics(&topics, &AdminOptions::new()).await.unwrap() {
        r.unwrap();
    }
}

pub async fn create_topic(name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = kafka().create().unwrap();
    for r in admin
        .create_topics(&[NewTopic::new(name, partitions, TopicReplication::Fixed(1))], &AdminOptions::new())
        .await
        .unwrap()
    {
        r.unwrap();
    }
}

pub async fn s3() -> aws_sdk_s3::Client {
    daemon::s3_client(stack())
}

pub async fn put(client: &aws_sdk_s3::Client, key: &str, body: Vec<u8>) {
    client.put_object().bucket(bucket()).key(key).body(ByteStream::from(body)).send().await.unwrap();
}

pub async fn get(client: &aws_sdk_s3::Client, key: &str) -> Option<Vec<u8>> {
    get_in(client, &bucket(), key).await
}

pub async fn get_in(client: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Option<Vec<u8>> {
    let r = client.get_object().bucket(bucket).key(key).send().await.ok()?;
    Some(r.body.collect().await.unwrap().into_bytes().to_vec())
}

/// Reads the manifest at `manifest_key` and every output it lists from `bucket`, checking each output's SHA-256
/// against the manifest's; returns the manifest.
pub async fn manifest_with_matching_outputs(client: &aws_sdk_s3::Client, bucket: &str, manifest_key: &str) -> Value {
    let manifest: Value = serde_json::from_slice(&get_in(client, bucket, manifest_key).await.unwrap()).unwrap();
    for o in manifest["outputs"].as_array().unwrap() {
        let bytes = get_in(client, bucket, o["key"].as_str().unwrap()).await.expect("output present");
        let entry = glowd::job::OutputEntry::of("k", glowd::job::MediaType::Png, &bytes);
        assert_eq!(o["sha256"].as_str().unwrap(), entry.sha256, "{o}");
    }
    manifest
}

/// Every object under `prefix/`, by key relative to it.
pub async fn objects(client: &aws_sdk_s3::Client, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    objects_in(client, &bucket(), prefix).await
}

pub async fn objects_in(client: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut pages = client.list_objects_v2().bucket(bucket).prefix(format!("{prefix}/")).into_paginator().send();
    while let Some(page) = pages.next().await {
        for o in page.unwrap().contents() {
            let key = o.key().unwrap();
            let r = client.get_object().bucket(bucket).key(key).send().await.unwrap();
            out.insert(key[prefix.len() + 1..].to_string(), r.body.collect().await.unwrap().into_bytes().to_vec());
        }
    }
    out
}

/// `glowd serve` against the dev stack, once `/readyz` says 200.
pub fn start_daemon(config: &Path, log: &Path, port: u16) -> Daemon {
    start_daemon_with(config, &[], log, port)
}

/// With extra environment (`GLOWD__…` overrides, the dev stack's variables).
pub fn start_daemon_with(config: &Path, envs: &[(String, String)], log: &Path, port: u16) -> Daemon {
    let daemon = Daemon::spawn(config, stack(), envs, log);
    daemon.wait_ready(port);
    daemon
}

/// The test pipeline file (`<dir>/pipeline.toml`) on the dev stack, for the test's names.
pub fn config(dir: &Path, n: &Names, model: &Path, port: u16) -> PathBuf {
    daemon::pipeline_toml(dir, n, model, port, stack(), &brokers(), &[])
}

/// A member that dies without leaving the group holds its partitions until its session times out: 6 s here (the
/// broker's minimum) rather than librdkafka's 45 s, so the restart takes over quickly.
pub fn short_session(cfg: &Path) {
    let text = std::fs::read_to_string(cfg).unwrap().replace(
        "pause_grace_ms = 200\n",
        "pause_grace_ms = 200\n[kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"1000\"\n",
    );
    std::fs::write(cfg, text).unwrap();
}

/// Adds librdkafka properties to a test pipeline file.
pub fn kafka_properties(cfg: &Path, pairs: &[(&str, &str)]) {
    let text = std::fs::read_to_string(cfg).unwrap();
    let lines: String = pairs.iter().map(|(k, v)| format!("\"{k}\" = \"{v}\"\n")).collect();
    let text = if text.contains("[kafka.properties]\n") {
        text.replace("[kafka.properties]\n", &format!("[kafka.properties]\n{lines}"))
    } else {
        text.replace("pause_grace_ms = 200\n", &format!("pause_grace_ms = 200\n[kafka.properties]\n{lines}"))
    };
    std::fs::write(cfg, text).unwrap();
}

pub async fn produce(topic: &str, payloads: &[String]) {
    let producer: FutureProducer = kafka().set("acks", "all").create().unwrap();
    let keys: Vec<String> = (0..payloads.len()).map(|i| format!("k{i}")).collect();
    // Enqueue everything, then await the deliveries: one round trip per batch, not per message.
    let deliveries: Vec<_> = payloads
        .iter()
        .zip(&keys)
        .enumerate()
        .map(|(i, (p, k))| {
            let trace = traceparent_for(i);
            let headers = rdkafka::message::OwnedHeaders::new()
                .insert(rdkafka::message::Header { key: "traceparent", value: Some(trace.as_bytes()) });
            producer
                .send_result(FutureRecord::to(topic).payload(p).key(k).headers(headers))
                .map_err(|(e, _)| e)
                .unwrap()
        })
        .collect();
    for d in deliveries {
        d.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
}

/// The W3C trace context `produce` puts on its `i`-th message.
pub fn traceparent_for(i: usize) -> String {
    format!("00-{:032x}-{:016x}-01", 0xabc0_0000 + i, 0x5eed + i)
}

/// Reads `topic` from the start until `want` records arrived (or the timeout), then for `settle` longer.
pub fn consume(topic: &str, want: usize, timeout: Duration, settle: Duration) -> Vec<Record> {
    daemon::consume(&kafka(), topic, want, timeout, settle)
}

/// One line for a result record that is not `done`: `job <id> status <status> kind <kind> stage <stage>: <message>`
/// (the error's kind, stage and message; a skipped job's reason as its kind; `-` for what the record lacks).
pub fn not_done_line(v: &Value) -> String {
    let text = |x: &Value| match x {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    };
    let error = &v["error"];
    let kind = if error["kind"].is_null() { text(&v["skip_reason"]) } else { text(&error["kind"]) };
    format!(
        "job {} status {} kind {kind} stage {}: {}",
        text(&v["job"]),
        text(&v["status"]),
        text(&error["stage"]),
        text(&error["message"]).replace(['\n', '\r'], " ")
    )
}

/// Reads the results topic until every job id in `jobs` has a result (or the timeout): `done` records per job.
/// Results of other jobs (a test's deliberately bad ones) are passed over; each result of one of `jobs` that is not
/// `done` goes to `not_done`, and that job counts as answered.
pub fn read_results(
    topic: &str,
    jobs: &[String],
    timeout: Duration,
    mut not_done: impl FnMut(&Value),
) -> BTreeMap<String, usize> {
    let c = daemon::reader(&kafka(), &format!("reader-{}-{}", topic, std::process::id()), topic);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut failed: BTreeSet<String> = BTreeSet::new();
    let t0 = Instant::now();
    while t0.elapsed() < timeout && !jobs.iter().all(|j| seen.contains_key(j) || failed.contains(j)) {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            let v: Value = serde_json::from_slice(m.payload().unwrap_or_default()).unwrap();
            let Some(job) = v["job"].as_str().filter(|j| jobs.iter().any(|w| w == j)) else { continue };
            if v["status"] != "done" {
                not_done(&v);
                failed.insert(job.to_string());
                continue;
            }
            *seen.entry(job.to_string()).or_default() += 1;
        }
    }
    seen
}

/// Reads the results topic until every job id in `jobs` has a `done` result (or the timeout): records per job.
/// Results of other jobs (a test's deliberately bad ones) are passed over; one of `jobs` that is not done fails the
/// test at once, with its record.
pub fn done_results(topic: &str, jobs: &[String], timeout: Duration) -> BTreeMap<String, usize> {
    read_results(topic, jobs, timeout, |v| panic!("not done: {}\n{v}", not_done_line(v)))
}

/// The group's committed offsets on the jobs topic, read without joining the group.
pub fn committed(n: &Names, partitions: i32) -> Vec<i64> {
    let c: BaseConsumer = kafka().set("group.id", &n.group).create().unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(&n.jobs, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    got.elements()
        .iter()
        .map(|e| match e.offset() {
            rdkafka::Offset::Offset(o) => o,
            _ => 0,
        })
        .collect()
}

/// Waits until the group has committed `total` offsets on the jobs topic.
pub fn wait_committed(n: &Names, total: i64, timeout: Duration) -> i64 {
    let t0 = Instant::now();
    loop {
        let now = committed(n, 3).iter().sum::<i64>();
        if now >= total || t0.elapsed() > timeout {
            return now;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The model of the crash, rebalance, outage, soak and chaos tests: enough work per batch (about 16x the default
/// test model's) that the daemon is still mid-run when the test kills it or adds a second one.
pub const HEAVY: [&str; 2] = ["steps=8", "hidden=128"];

/// What the crash, rebalance and outage tests start from: their own topics, a model with directions, and
/// `count` mixed jobs (not yet produced) over two uploaded images.
pub struct Workload {
    pub tmp: tempfile::TempDir,
    pub n: Names,
    pub model: PathBuf,
    pub rt: tokio::runtime::Runtime,
    pub client: aws_sdk_s3::Client,
    pub ids: Vec<String>,
    pub jobs: Vec<String>,
}

pub fn workload(test: &str, model: &[&str], count: usize) -> Workload {
    let tmp = tempfile::tempdir().unwrap();
    let n = names(test);
    let model = super::pipeline::model_with_directions_of(tmp.path(), model);
    let rt = runtime();
    let client = rt.block_on(s3());
    rt.block_on(create_topics(&n));
    let (ids, jobs) = mixed_jobs(&client, &rt, &n, count);
    Workload { tmp, n, model, rt, client, ids, jobs }
}

/// The jobs of the crash and rebalance tests: seeded samples, encodes and edits of two uploaded images.
fn mixed_jobs(client: &aws_sdk_s3::Client, rt: &tokio::runtime::Runtime, n: &Names, count: usize) -> (Vec<String>, Vec<String>) {
    rt.block_on(async {
        put(client, &format!("{}/a.png", n.inputs), super::pipeline::png_bytes(40, 48, 1)).await;
        put(client, &format!("{}/b.png", n.inputs), super::pipeline::png_bytes(32, 32, 2)).await;
    });
    let input = |name: &str| format!("s3://{}/{}/{name}", bucket(), n.inputs);
    let mut ids = Vec::new();
    let mut payloads = Vec::new();
    for i in 0..count {
        let id = format!("m-{i}");
        let payload = match i % 3 {
            0 => job(&id, "sample", json!({"n": 1, "seed": i})),
            1 => job(&id, "encode", json!({"input": input(if i % 2 == 0 { "a.png" } else { "b.png" })})),
            _ => job(
                &id,
                "edit",
                json!({"input": input("a.png"), "edits": [{"attribute": "Smiling", "strength": (i % 5) as f64 * 0.3}],
                       "write_latents": true}),
            ),
        };
        ids.push(id);
        payloads.push(payload);
    }
    (ids, payloads)
}
