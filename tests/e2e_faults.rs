//! Faults outside the daemon, against the dev stack (`scripts/dev-stack up`): S3 down for a while, the broker down
//! mid-run, a DLQ that refuses records (G9), lost group offsets with `auto.offset.reset=error` (G21), transient S3
//! faults and flipped bytes through a fault proxy (G10, G13), and stores that do or do not honour create-only
//! writes (G12: MinIO, moto, Garage, the proxy playing such a store).
//!
//! Each test uses its own topics, consumer group and key prefixes, so tests (and reruns) never see each other's
//! records. They run one at a time (a lock): two daemons and the broker on two cores would only be slower.
mod common;
use common::daemon::{self, free_port, http_get, job, runtime, serial, Daemon};
use common::e2e::*;
use common::fault_proxy;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

#[test]
fn s3_down_for_a_while_loses_nothing_and_holds_offsets() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let n = names("s3down");
    let model = common::pipeline::model_with_directions(tmp.path());
    let rt = runtime();
    rt.block_on(create_topics(&n));
    let jobs: Vec<String> = (0..10).map(|i| job(&format!("o-{i}"), "sample", json!({"n": 1}))).collect();
    let port = free_port();
    let cfg = config(tmp.path(), &n, &model, port);
    let daemon = start_daemon(&cfg, &tmp.path().join("daemon.log"), port);
    dev_stack_command(&["stop-s3"]);
    rt.block_on(produce(&n.jobs, &jobs));
    std::thread::sleep(Duration::from_secs(6));
    let during = consume(&n.results, 1, Duration::from_secs(1), Duration::ZERO);
    let held = committed(&n, 3);
    dev_stack_command(&["start-s3"]);
    let results = consume(&n.results, jobs.len(), Duration::from_secs(120), Duration::from_secs(2));
    let dlq = consume(&n.dlq, 0, Duration::from_secs(2), Duration::ZERO);
    let log = daemon.log_text();
    assert!(daemon.stop().success(), "{log}");
    assert!(during.is_empty(), "results while the store was down");
    assert!(held.iter().all(|&o| o <= 0), "offsets committed while the store was down: {held:?}");
    assert!(log.contains("transient failure, retrying"), "{log}");
    assert_eq!(results.len(), jobs.len(), "{log}");
    assert!(results.iter().all(|r| String::from_utf8_lossy(&r.payload).contains("\"done\"")));
    assert!(dlq.is_empty(), "a transient outage dead-lettered jobs");
    assert_eq!(committed(&n, 3).iter().sum::<i64>(), jobs.len() as i64, "everything committed after the clean stop");
}

#[test]
fn broker_down_mid_run_fails_readiness_then_loses_nothing() {
    let _serial = serial();
    let Workload { tmp, n, model, rt, ids, jobs, .. } = workload("brokerdown", &HEAVY, 150);
    rt.block_on(produce(&n.jobs, &jobs));
    let port = free_port();
    let cfg = config(tmp.path(), &n, &model, port);
    let daemon = start_daemon(&cfg, &tmp.path().join("daemon.log"), port);
    assert!(!done_results(&n.results, &ids[..1], Duration::from_secs(120)).is_empty(), "{}", daemon.log_text());
    dev_stack_command(&["stop-kafka"]);
    let t0 = Instant::now();
    let mut unready = None;
    while t0.elapsed() < Duration::from_secs(40) {
        match http_get(port, "/readyz") {
            Some((503, body)) => {
                unready = Some(body);
                break;
            }
            _ => std::thread::sleep(Duration::from_millis(250)),
        }
    }
    let live = http_get(port, "/healthz").map(|(s, _)| s);
    dev_stack_command(&["start-kafka"]);
    let t1 = Instant::now();
    while http_get(port, "/readyz").map(|(s, _)| s) != Some(200) {
        assert!(t1.elapsed() < Duration::from_secs(60), "not ready again after the broker came back:\n{}", daemon.log_text());
        std::thread::sleep(Duration::from_millis(250));
    }
    let seen = done_results(&n.results, &ids, Duration::from_secs(240));
    let committed_all = wait_committed(&n, ids.len() as i64, Duration::from_secs(60));
    let log = daemon.log_text();
    assert!(daemon.stop().success(), "{log}");
    assert_eq!(unready.as_deref(), Some("kafka: no broker reachable\n"), "readiness while the broker was down\n{log}");
    assert_eq!(live, Some(200), "liveness must hold while the broker is down (a restart would not help)");
    assert_eq!(seen.len(), ids.len(), "jobs lost over the broker outage\n{log}");
    assert_eq!(committed_all, ids.len() as i64);
    assert!(consume(&n.dlq, 0, Duration::from_secs(2), Duration::ZERO).is_empty(), "an outage dead-lettered jobs");
}

/// Produces `payloads` in order; where each landed: (partition, offset).
async fn produce_at(topic: &str, payloads: &[String]) -> Vec<(i32, i64)> {
    let producer: FutureProducer = kafka().set("acks", "all").create().unwrap();
    let mut at = Vec::new();
    for (i, p) in payloads.iter().enumerate() {
        let key = format!("k{i}");
        let d = producer.send(FutureRecord::to(topic).payload(p).key(&key), Duration::from_secs(30)).await;
        let d = d.map_err(|(e, _)| e).unwrap();
        at.push((d.partition, d.offset));
    }
    at
}

/// Sets topic configs (the broker's AlterConfigs: the topic's other overrides are replaced, and these topics have
/// none).
async fn set_topic_config(topic: &str, key: &str, value: &str) {
    let admin: AdminClient<DefaultClientContext> = kafka().create().unwrap();
    let change = rdkafka::admin::AlterConfig::new(rdkafka::admin::ResourceSpecifier::Topic(topic)).set(key, value);
    for r in admin.alter_configs(&[change], &AdminOptions::new()).await.unwrap() {
        r.unwrap();
    }
}

/// A job message too large for the DLQ (1,000,100 bytes on a jobs topic that allows 2 MB, while the DLQ producer
/// takes 1 MB) is dead-lettered cut to fit, marked with its original size and SHA-256, and its offset and the
/// next job's are committed: the partition does not wedge.
#[test]
fn a_job_too_large_for_the_dlq_is_dead_lettered_cut_to_fit() {
    use sha2::Digest;
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let n = names("hugejob");
    let model = common::pipeline::model_with_directions(tmp.path());
    let rt = runtime();
    rt.block_on(create_topics(&n));
    rt.block_on(set_topic_config(&n.jobs, "max.message.bytes", "2097152"));
    let prefix = "{\"pad\": \"";
    let huge = format!("{prefix}{}\"}}", "x".repeat(1_000_100 - prefix.len() - 2));
    assert_eq!(huge.len(), 1_000_100);
    let producer: FutureProducer = kafka().set("acks", "all").set("message.max.bytes", "2097152").create().unwrap();
    rt.block_on(async {
        // One partition for both, in order: the good job waits behind the huge one.
        for (key, payload) in [("k0", huge.clone()), ("k0", job("after-huge", "sample", json!({"n": 1})))] {
            producer
                .send(FutureRecord::to(&n.jobs).key(key).payload(&payload), Duration::from_secs(30))
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
    });
    let port = free_port();
    let cfg = config(tmp.path(), &n, &model, port);
    let daemon = start_daemon(&cfg, &tmp.path().join("daemon.log"), port);
    let done = wait_committed(&n, 2, Duration::from_secs(120));
    let dead = consume(&n.dlq, 1, Duration::from_secs(30), Duration::from_secs(1));
    let log = daemon.log_text();
    assert!(daemon.stop().success(), "{log}");
    assert_eq!(done, 2, "the partition wedged behind the huge message: {log}");
    assert_eq!(dead.len(), 1, "{log}");
    let digest: String = sha2::Sha256::digest(huge.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        dead[0].headers.get("glowd.payload.truncated").map(String::as_str),
        Some(format!("original 1000100 bytes, sha256 {digest}").as_str())
    );
    assert_eq!(dead[0].headers.get("glowd.error.kind").map(String::as_str), Some("too_large"));
    assert!(dead[0].payload.len() < 1_000_000 && dead[0].payload.len() > 900_000, "{}", dead[0].payload.len());
    assert!(huge.as_bytes().starts_with(&dead[0].payload));
}

/// G9: while the DLQ topic refuses every record (its `max.message.bytes` is 1), a bad job is not skipped: its
/// offset is never committed, the good jobs after it finish but their offsets wait behind it, and once the DLQ
/// takes records again the dead letters land and every offset is committed, without a restart.
#[test]
fn a_dlq_that_refuses_records_holds_the_offsets_until_the_dead_letters_are_durable() {
    let _serial = serial();
    let Workload { tmp, n, model, rt, ids, jobs, .. } = workload("dlqdown", &[], 24);
    rt.block_on(set_topic_config(&n.dlq, "max.message.bytes", "1"));
    let bad = ["{not json".to_string(), json!({"version": 1, "id": "no-kind"}).to_string(), "[]".to_string()];
    let mut payloads = Vec::new();
    for (i, j) in jobs.iter().enumerate() {
        if i % 8 == 3 {
            payloads.push(bad[i / 8].clone());
        }
        payloads.push(j.clone());
    }
    let at = rt.block_on(produce_at(&n.jobs, &payloads));
    // Per partition, the first bad job's offset: nothing at or after it may be committed while the DLQ refuses.
    let mut first_bad: BTreeMap<i32, i64> = BTreeMap::new();
    for (p, (part, offset)) in payloads.iter().zip(&at) {
        if bad.contains(p) {
            first_bad.entry(*part).and_modify(|o| *o = (*o).min(*offset)).or_insert(*offset);
        }
    }
    let port = free_port();
    let cfg = config(tmp.path(), &n, &model, port);
    let daemon = start_daemon(&cfg, &tmp.path().join("daemon.log"), port);
    let seen = done_results(&n.results, &ids, Duration::from_secs(180));
    assert_eq!(seen.len(), ids.len(), "good jobs must not wait for the DLQ\n{}", daemon.log_text());
    // Auto-commit runs every second: give it a few rounds to commit anything it (wrongly) could.
    std::thread::sleep(Duration::from_secs(4));
    let held = committed(&n, 3);
    let log = daemon.log_text();
    for (part, offset) in &first_bad {
        assert!(
            held[*part as usize] <= *offset,
            "partition {part}: committed {} past the un-dead-lettered job at offset {offset}\n{log}",
            held[*part as usize]
        );
    }
    assert!(consume(&n.dlq, 1, Duration::from_secs(3), Duration::ZERO).is_empty(), "a record got into the DLQ");
    assert!(log.contains("reporting failed, retrying"), "no retried DLQ produce in the log\n{log}");
    assert_eq!(http_get(port, "/healthz").map(|(s, _)| s), Some(200), "liveness must hold while the DLQ refuses");

    // The DLQ recovers: the same daemon dead-letters the three and commits everything.
    rt.block_on(set_topic_config(&n.dlq, "max.message.bytes", "1048588"));
    let all = wait_committed(&n, payloads.len() as i64, Duration::from_secs(120));
    let dead = consume(&n.dlq, bad.len(), Duration::from_secs(30), Duration::from_secs(2));
    let log = daemon.log_text();
    assert!(daemon.stop().success(), "{log}");
    assert_eq!(all, payloads.len() as i64, "committed after the DLQ recovered (held at {held:?})\n{log}");
    assert_eq!(dead.len(), bad.len(), "one dead letter per bad job\n{log}");
    let mut payloads_dead: Vec<String> = dead.iter().map(|r| String::from_utf8_lossy(&r.payload).into_owned()).collect();
    payloads_dead.sort();
    let mut want: Vec<String> = bad.to_vec();
    want.sort();
    assert_eq!(payloads_dead, want);
    assert!(dead.iter().all(|r| !r.headers["glowd.error.kind"].is_empty()));
    println!("dlq refused: offsets held at {held:?} behind bad jobs at {first_bad:?}; after recovery {all} committed");
}

/// G21: a group whose committed offsets are gone (expired after `offsets.retention.minutes`, here deleted, which
/// leaves the same state) and `auto.offset.reset=error`: the daemon neither replays the topic from the start nor
/// skips to its end. It stays up but not ready, says which partitions need an operator's reset, sets
/// `glowd_offset_reset_refused`, and processes nothing.
#[test]
fn lost_group_offsets_with_reset_error_are_refused_not_silently_reset() {
    let _serial = serial();
    let Workload { tmp, n, model, rt, ids, jobs, .. } = workload("expiry", &[], 12);
    let (first, second) = (&jobs[..6], &jobs[6..]);
    rt.block_on(produce(&n.jobs, first));
    let port = free_port();
    let cfg = config(tmp.path(), &n, &model, port);
    short_session(&cfg);
    let daemon = start_daemon(&cfg, &tmp.path().join("daemon.log"), port);
    assert_eq!(done_results(&n.results, &ids[..6], Duration::from_secs(120)).len(), 6, "{}", daemon.log_text());
    assert_eq!(wait_committed(&n, 6, Duration::from_secs(30)), 6);
    assert!(daemon.stop().success());

    let admin: AdminClient<DefaultClientContext> = kafka().create().unwrap();
    // The group is deletable once the broker has seen the member leave.
    let t0 = Instant::now();
    loop {
        let r = rt.block_on(admin.delete_groups(&[&n.group], &AdminOptions::new())).unwrap().remove(0);
        match r {
            Ok(_) => break,
            Err((_, e)) if t0.elapsed() < Duration::from_secs(30) => {
                assert_eq!(e, rdkafka::types::RDKafkaErrorCode::NonEmptyGroup);
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("deleting the group: {e:?}"),
        }
    }
    rt.block_on(produce(&n.jobs, second));
    kafka_properties(&cfg, &[("auto.offset.reset", "error")]);
    let daemon = Daemon::spawn(&cfg, stack(), &[], &tmp.path().join("daemon2.log"));
    let t0 = Instant::now();
    let mut refused = None;
    while t0.elapsed() < Duration::from_secs(90) && refused.is_none() {
        if let Some((503, body)) = http_get(port, "/readyz") {
            if body.contains("auto.offset.reset=error") {
                refused = Some(body);
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let metrics = http_get(port, "/metrics").map(|(_, b)| b).unwrap_or_default();
    // Nothing replayed, nothing of the new jobs processed.
    let late = done_results(&n.results, &ids[6..], Duration::from_secs(5));
    let replayed = consume(&n.results, 7, Duration::from_secs(3), Duration::ZERO).len();
    let log = daemon.log_text();
    let exit = daemon.stop();
    let body = refused.unwrap_or_else(|| panic!("readiness never named the refused reset\n{log}"));
    for p in 0..3 {
        assert!(body.contains(&format!("{}[{p}]", n.jobs)) || body.contains(&format!("{}-{p}", n.jobs)), "{body}");
    }
    assert!(metrics.lines().any(|l| l.starts_with("glowd_offset_reset_refused{") && l.ends_with(" 1")), "{metrics}");
    assert!(late.is_empty(), "jobs after the lost offsets were processed: {late:?}");
    assert_eq!(replayed, 6, "the first six were replayed (or results are missing)");
    assert!(log.contains("auto.offset.reset=error"), "{log}");
    assert!(exit.success(), "{log}");
}

/// Points a test pipeline file's S3 endpoint at a local port (the fault proxy).
fn s3_endpoint(cfg: &Path, port: u16) {
    let text = std::fs::read_to_string(cfg).unwrap();
    let text = text.replace(&format!("endpoint = \"{}\"", stack()["S3_ENDPOINT"]), &format!("endpoint = \"http://127.0.0.1:{port}\""));
    assert!(text.contains(&format!("127.0.0.1:{port}")));
    std::fs::write(cfg, text).unwrap();
}

fn minio_host_port() -> String {
    stack()["S3_ENDPOINT"].trim_start_matches("http://").trim_end_matches('/').to_string()
}

/// G10 + G13: the daemon talks to S3 through a proxy that answers 30 % of requests `503 SlowDown`, drops 5 % of
/// connections mid-request, answers 5 % of create-only PUTs `409`, holds 5 % for 2 s, and flips a byte in 5 % of
/// the uploads that do go through (MinIO refuses those: the CRC32C and the signed payload hash no longer match).
/// Every job still finishes, none is dead-lettered, and every stored output matches the SHA-256 its manifest
/// gives, read back from MinIO directly; the flipped uploads were really sent and refused.
#[test]
fn s3_faults_and_flipped_bytes_through_a_proxy_lose_nothing_and_store_nothing_corrupt() {
    let _serial = serial();
    let Workload { tmp, n, model, rt, client, ids, jobs } = workload("s3faults", &[], 45);
    let faults = fault_proxy::Faults {
        reset: 0.05,
        slowdown: 0.30,
        conflict: 0.05,
        delay: 0.05,
        delay_for: Duration::from_secs(2),
        flip_upload: 0.05,
        ignore_if_none_match: false,
    };
    let proxy = fault_proxy::FaultProxy::start(&minio_host_port(), faults, 7);
    let port = free_port();
    let cfg = config(tmp.path(), &n, &model, port);
    s3_endpoint(&cfg, proxy.port);
    rt.block_on(produce(&n.jobs, &jobs));
    let daemon = start_daemon(&cfg, &tmp.path().join("daemon.log"), port);
    let seen = done_results(&n.results, &ids, Duration::from_secs(300));
    let all = wait_committed(&n, ids.len() as i64, Duration::from_secs(60));
    let metrics = http_get(port, "/metrics").map(|(_, b)| b).unwrap_or_default();
    let log = daemon.log_text();
    assert!(daemon.stop().success(), "{log}");
    let counts = proxy.counts.summary();
    println!("s3 faults: {counts}");
    assert_eq!(seen.len(), ids.len(), "jobs lost to transient S3 faults ({counts})\n{log}");
    assert_eq!(all, ids.len() as i64);
    assert!(consume(&n.dlq, 1, Duration::from_secs(3), Duration::ZERO).is_empty(), "transient faults were dead-lettered\n{log}");
    let c = &proxy.counts;
    for (what, v) in [("resets", &c.resets), ("SlowDown", &c.slowdowns), ("409", &c.conflicts), ("flips", &c.flips), ("delays", &c.delays)] {
        assert!(v.load(std::sync::atomic::Ordering::Relaxed) > 0, "no {what} injected: {counts}");
    }
    assert!(log.contains("damaged in transit"), "no refused flipped upload in the log ({counts})\n{log}");
    assert!(metrics.contains("glowd_retries_total"), "{metrics}");

    // Read back from MinIO itself: every output is what its manifest says (sha256), and every image decodes.
    let stored = rt.block_on(objects(&client, &n.outputs));
    let mut checked = 0;
    for (key, bytes) in &stored {
        if !key.ends_with("manifest.json") {
            continue;
        }
        let manifest: Value = serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("{key}: {e}"));
        for o in manifest["outputs"].as_array().unwrap() {
            let rel = o["key"].as_str().unwrap().trim_start_matches(&format!("{}/", n.outputs)).to_string();
            let got = stored.get(&rel).unwrap_or_else(|| panic!("{rel} listed in {key} but not stored"));
            use sha2::Digest;
            let digest: String = sha2::Sha256::digest(got).iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(digest, o["sha256"].as_str().unwrap(), "{rel}: stored bytes differ from what was written");
            if rel.ends_with(".png") {
                image::load_from_memory(got).unwrap_or_else(|e| panic!("{rel}: {e}"));
            }
            checked += 1;
        }
    }
    assert!(checked >= ids.len(), "{checked} outputs checked for {} jobs", ids.len());
}

/// G12: a store that answers every create-only PUT `200` (it ignores `If-None-Match`, as some S3-compatible
/// servers do) fails the start-up self-test: the daemon exits non-zero, saying why, and is never ready.
#[test]
fn a_store_that_ignores_conditional_writes_is_refused_at_start() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let n = names("ifnonematch");
    let model = common::pipeline::model_with_directions_of(tmp.path(), &[]);
    let faults = fault_proxy::Faults { ignore_if_none_match: true, ..Default::default() };
    let proxy = fault_proxy::FaultProxy::start(&minio_host_port(), faults, 1);
    let port = free_port();
    let cfg = config(tmp.path(), &n, &model, port);
    s3_endpoint(&cfg, proxy.port);
    let mut daemon = Daemon::spawn(&cfg, stack(), &[], &tmp.path().join("daemon.log"));
    let (status, _, readyz) = daemon.watch_until_exit(port, Duration::from_secs(120));
    let log = daemon.log_text();
    let status = status.unwrap_or_else(|| panic!("still running after 120 s:\n{log}"));
    assert!(!status.success(), "{log}");
    assert!(!readyz.contains(&200), "ready on a store that ignores conditional writes\n{log}");
    assert!(log.contains("ignores conditional writes"), "{log}");
    assert_eq!(proxy.counts.faked_puts.load(std::sync::atomic::Ordering::Relaxed), 2, "{}", proxy.counts.summary());
}

/// G12, the passing side: on two S3 implementations that honour `If-None-Match: *`, MinIO (the dev stack) and moto
/// (`scripts/dev-stack moto-up`), the start-up self-test passes, the daemon becomes ready, and a job's outputs land
/// in that store. Prints how long each self-test took (asks under 1 s; a figure, not an assertion in docs/reliability.md).
#[test]
fn minio_and_moto_pass_the_conditional_write_self_test_and_take_outputs() {
    let _serial = serial();
    let moto = daemon::dev_stack(&[("moto-up", "moto-env")]);
    let tmp = tempfile::tempdir().unwrap();
    let model = common::pipeline::model_with_directions_of(tmp.path(), &[]);
    let rt = runtime();
    let mut on_moto = stack().clone();
    on_moto.insert("S3_ENDPOINT".into(), moto["MOTO_S3_ENDPOINT"].clone());
    on_moto.insert("S3_BUCKET".into(), moto["MOTO_S3_BUCKET"].clone());
    let mut figures = Vec::new();
    for (backend, env) in [("minio", stack().clone()), ("moto", on_moto)] {
        let n = names(&format!("selftest-{backend}"));
        rt.block_on(create_topics(&n));
        let dir = tmp.path().join(backend);
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let cfg = daemon::pipeline_toml(&dir, &n, &model, port, &env, &brokers(), &[]);
        // JSON logs: the self-test time is read back as a field.
        let daemon = Daemon::spawn(&cfg, &env, &[("GLOWD_LOG_FORMAT".into(), "json".into())], &dir.join("daemon.log"));
        daemon.wait_ready(port);
        rt.block_on(produce(&n.jobs, &[job("selftest-1", "sample", json!({"n": 1, "seed": 5}))]));
        let results = consume(&n.results, 1, Duration::from_secs(120), Duration::ZERO);
        let log = daemon.log_text();
        assert!(daemon.stop().success(), "{backend}:\n{log}");
        assert_eq!(results.len(), 1, "{backend}:\n{log}");
        let result: Value = serde_json::from_slice(&results[0].payload).unwrap();
        assert_eq!(result["status"], "done", "{backend}: {result}");
        // Read back from that store directly: the manifest, and every output it lists with its checksum.
        let manifest_key = result["outputs"].as_array().unwrap().last().unwrap().as_str().unwrap().to_string();
        assert!(manifest_key.starts_with(&n.outputs), "{backend}: {manifest_key}");
        rt.block_on(manifest_with_matching_outputs(&daemon::s3_client(&env), &env["S3_BUCKET"], &manifest_key));
        // The daemon's own measure of its self-test, on the "honours create-only writes" line.
        let line: Value = log
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| l["message"] == "S3 honours create-only writes")
            .unwrap_or_else(|| panic!("{log}"));
        let ms = line["self_test_ms"].as_u64().unwrap_or_else(|| panic!("{line}"));
        figures.push(format!("{backend} {ms} ms"));
    }
    println!("conditional-write self-test passed: {}", figures.join(", "));
}

/// G12 against a real store that ignores create-only writes: Garage 2.5.0 (`scripts/dev-stack garage-up`), whose
/// PutObject reads no `If-None-Match`. The daemon must refuse it at start: exit non-zero, never ready, saying why,
/// while the first probe write did land (so the refusal is about the missing condition, not about reaching the
/// store). Not in the suite: Garage is built from crates.io the first time, which takes many minutes on two cores.
/// `cargo test --release --test e2e_faults -- --ignored --nocapture garage`.
#[test]
#[ignore]
fn garage_ignores_conditional_writes_and_is_refused_at_start() {
    let _serial = serial();
    let garage = daemon::dev_stack(&[("garage-up", "garage-env")]);
    let mut env = stack().clone();
    for (ours, theirs) in [
        ("S3_ENDPOINT", "GARAGE_S3_ENDPOINT"),
        ("S3_BUCKET", "GARAGE_S3_BUCKET"),
        ("AWS_ACCESS_KEY_ID", "GARAGE_ACCESS_KEY_ID"),
        ("AWS_SECRET_ACCESS_KEY", "GARAGE_SECRET_ACCESS_KEY"),
    ] {
        env.insert(ours.into(), garage[theirs].clone());
    }
    let tmp = tempfile::tempdir().unwrap();
    let n = names("garage");
    let model = common::pipeline::model_with_directions_of(tmp.path(), &[]);
    let port = free_port();
    let cfg = daemon::pipeline_toml(tmp.path(), &n, &model, port, &env, &brokers(), &[]);
    let mut daemon = Daemon::spawn(&cfg, &env, &[], &tmp.path().join("daemon.log"));
    let (status, after, readyz) = daemon.watch_until_exit(port, Duration::from_secs(120));
    let log = daemon.log_text();
    let status = status.unwrap_or_else(|| panic!("still running after 120 s:\n{log}"));
    assert!(!status.success(), "{log}");
    assert!(!readyz.contains(&200), "ready on Garage: {readyz:?}\n{log}");
    assert!(log.contains("ignores conditional writes"), "{log}");
    let probe = format!("{}/{}", n.outputs, glowd::daemon::SELF_TEST_KEY);
    let stored = runtime().block_on(daemon::s3_client(&env).head_object().bucket(&env["S3_BUCKET"]).key(&probe).send());
    assert!(stored.is_ok(), "the probe {probe} is not in Garage: {stored:?}");
    println!("garage {}: refused after {:.1} s, {status}", garage["GARAGE_S3_ENDPOINT"], after.as_secs_f64());
}

/// Which of the daemon's accesses the fault proxy denies.
#[derive(Clone, Copy, Debug)]
enum Deny {
    Reads,
    Writes,
}

/// Issue 16 item 4: a store that denies the daemon's own access (`403 AccessDenied` to every GET, or every PUT, as
/// after a rotated key, a bad bucket policy or a disabled KMS key) for `seconds` while `count` mixed jobs are
/// queued. It is an outage of the daemon's access, not `count` bad jobs: nothing is dead-lettered (the retry
/// budget is 30 s, shorter than the denial), `/readyz` fails from the first denial until the store serves again,
/// saying why, `glowd_store_denied` is 1 meanwhile, and every job is done afterwards, every offset committed. A
/// third of the jobs are samples, which read nothing: while reads are denied their writes are served, and that
/// must not make the denied reads look like the jobs' fault.
fn store_denies_the_daemon_for_a_while(test: &str, deny: Deny, seconds: u64, count: usize) {
    let Workload { tmp, n, model, rt, ids, jobs, .. } = workload(test, &[], count);
    let proxy = fault_proxy::FaultProxy::start(&minio_host_port(), fault_proxy::Faults::default(), 3);
    let port = free_port();
    let cfg = config(tmp.path(), &n, &model, port);
    s3_endpoint(&cfg, proxy.port);
    let daemon = start_daemon(&cfg, &tmp.path().join("daemon.log"), port);
    let switch = match deny {
        Deny::Reads => &proxy.switches.deny_get,
        Deny::Writes => &proxy.switches.deny_put,
    };
    switch.store(true, std::sync::atomic::Ordering::SeqCst);
    rt.block_on(produce(&n.jobs, &jobs));
    // /readyz every 250 ms while the store denies: 503 from the first denial on, never 200 again until it serves.
    let t0 = Instant::now();
    let mut seen: Vec<(f64, u16, String)> = Vec::new();
    let mut metrics_during = String::new();
    while t0.elapsed() < Duration::from_secs(seconds) {
        if let Some((status, body)) = http_get(port, "/readyz") {
            seen.push((t0.elapsed().as_secs_f64(), status, body));
        }
        if metrics_during.is_empty() && t0.elapsed() > Duration::from_secs(seconds / 2) {
            metrics_during = http_get(port, "/metrics").map(|(_, b)| b).unwrap_or_default();
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let dlq_during = consume(&n.dlq, 1, Duration::from_secs(2), Duration::ZERO);
    switch.store(false, std::sync::atomic::Ordering::SeqCst);
    let lifted = Instant::now();
    let done = read_results(&n.results, &ids, Duration::from_secs(900), |_| {});
    let all_done = lifted.elapsed();
    let committed_all = wait_committed(&n, ids.len() as i64, Duration::from_secs(60));
    let ready_after = http_get(port, "/readyz");
    let metrics_after = http_get(port, "/metrics").map(|(_, b)| b).unwrap_or_default();
    // All of them, to count them (none are expected: this waits the 5 s out).
    let dlq = consume(&n.dlq, ids.len(), Duration::from_secs(5), Duration::ZERO);
    let log = daemon.log_text();
    let counts = proxy.counts.summary();
    let first_503 = seen.iter().position(|(_, s, _)| *s == 503);
    let ready_again: Vec<f64> =
        first_503.map(|i| seen[i..].iter().filter(|(_, s, _)| *s == 200).map(|(t, _, _)| *t).collect()).unwrap_or_default();
    println!(
        "{test}: {count} jobs, {deny:?} denied for {seconds} s ({counts}); /readyz 503 from {:.1} s, {} probes, {} ready \
         in between; dead letters during {} and in all {}; all done {:.1} s after the store served again",
        first_503.map(|i| seen[i].0).unwrap_or(f64::NAN),
        seen.len(),
        ready_again.len(),
        dlq_during.len(),
        dlq.len(),
        all_done.as_secs_f64()
    );
    assert!(daemon.stop().success(), "{log}");
    let letters: Vec<String> = dlq.iter().take(3).map(|r| format!("{:?}", r.headers)).collect();
    assert!(dlq.is_empty(), "{} dead letters for a denial of the daemon's access, e.g. {letters:?}\n{counts}", dlq.len());
    assert!(proxy.counts.denied.load(std::sync::atomic::Ordering::Relaxed) > 0, "nothing denied: {counts}");
    let i = first_503.unwrap_or_else(|| panic!("/readyz never failed while the store denied: {seen:?}\n{log}"));
    assert!(seen[i].0 < 10.0, "/readyz failed only {:.1} s into the denial", seen[i].0);
    assert!(seen[i].2.starts_with("object store: "), "{:?}", seen[i]);
    assert!(ready_again.is_empty(), "/readyz said ready while the store still denied, at {ready_again:?} s");
    assert!(metrics_during.contains("glowd_store_denied 1"), "{metrics_during}");
    assert_eq!(done.len(), ids.len(), "jobs not done after the store served again\n{log}");
    assert_eq!(committed_all, ids.len() as i64);
    assert_eq!(ready_after.map(|(s, _)| s), Some(200), "not ready after the store served again");
    assert!(metrics_after.contains("glowd_store_denied 0"), "{metrics_after}");
}

/// The test: 403 to every GET for 60 s with 1,000 jobs queued. `GLOWD_DENIED_JOBS` scales the count.
#[test]
fn a_store_denying_every_read_for_a_minute_dead_letters_nothing_and_fails_readiness() {
    let _serial = serial();
    let count = std::env::var("GLOWD_DENIED_JOBS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    store_denies_the_daemon_for_a_while("deniedreads", Deny::Reads, 60, count);
}

/// The same for writes (before: the first 403 on a PUT stopped the daemon, exit non-zero), 20 s with 90 jobs.
#[test]
fn a_store_denying_every_write_for_a_while_dead_letters_nothing_and_fails_readiness() {
    let _serial = serial();
    store_denies_the_daemon_for_a_while("deniedwrites", Deny::Writes, 20, 90);
}
