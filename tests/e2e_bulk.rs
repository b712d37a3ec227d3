//! Load against the dev stack (`scripts/dev-stack up`): a backlog past the in-flight limit pauses and resumes the
//! partitions; and, not in the suite, throughput through Kafka and S3 against the raw model, a soak at twice the
//! throughput (G7), and peak memory with a 1k and a 100k backlog.
//!
//! Each test uses its own topics, consumer group and key prefixes, so tests (and reruns) never see each other's
//! records. They run one at a time (a lock): two daemons and the broker on two cores would only be slower.
mod common;
use common::bin::glowd;
use common::daemon::{self, free_port, job, runtime, serial};
use common::e2e::*;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// A partition paused under backlog, revoked when a second member joins and assigned back when it leaves, is
/// fetched again (librdkafka keeps the application's pause flag across unassign and assign): 200 jobs queued,
/// `max_in_flight_jobs` 2, a member that joins and leaves; all 200 finish.
#[test]
fn a_paused_partition_that_comes_back_is_fetched_again() {
    let _serial = serial();
    let Workload { tmp, n, model, ids, jobs, rt, .. } = workload("pauseback", &HEAVY, 200);
    rt.block_on(produce(&n.jobs, &jobs));
    let (port_a, port_b) = (free_port(), free_port());
    let (dir_a, dir_b) = (tmp.path().join("a"), tmp.path().join("b"));
    std::fs::create_dir_all(&dir_a).unwrap();
    std::fs::create_dir_all(&dir_b).unwrap();
    let (cfg_a, cfg_b) = (config(&dir_a, &n, &model, port_a), config(&dir_b, &n, &model, port_b));
    for cfg in [&cfg_a, &cfg_b] {
        let text = std::fs::read_to_string(cfg).unwrap().replace("max_in_flight_jobs = 16", "max_in_flight_jobs = 2");
        std::fs::write(cfg, text).unwrap();
        short_session(cfg);
    }
    let a = start_daemon(&cfg_a, &dir_a.join("daemon.log"), port_a);
    let wait_for = |what: &dyn Fn() -> bool| {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(60) && !what() {
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait_for(&|| a.log_text().contains("paused (pipeline full)"));
    // B joins (partitions, paused ones among them, move from A to B), then leaves (they come back to A).
    let b = start_daemon(&cfg_b, &dir_b.join("daemon.log"), port_b);
    wait_for(&|| a.log_text().contains("partition revoked") && b.log_text().contains("partition assigned"));
    let log_b = b.log_text();
    assert!(b.stop().success(), "{log_b}");
    let seen = done_results(&n.results, &ids, Duration::from_secs(240));
    let log_a = a.log_text();
    assert!(a.stop().success(), "{log_a}");
    assert!(log_a.contains("paused (pipeline full)"), "A never paused:\n{log_a}");
    assert!(log_a.contains("partition revoked"), "B's arrival took no partition from A:\n{log_a}");
    assert_eq!(seen.len(), ids.len(), "jobs never done after their partitions came back to A:\n{log_a}");
}

#[test]
fn a_backlog_beyond_the_in_flight_limit_pauses_and_resumes_the_partitions() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let n = names("backlog");
    let model = common::pipeline::model_with_directions(tmp.path());
    let rt = runtime();
    rt.block_on(create_topics(&n));
    let jobs: Vec<String> = (0..60).map(|i| job(&format!("p-{i}"), "sample", json!({"n": 2}))).collect();
    rt.block_on(produce(&n.jobs, &jobs));
    let port = free_port();
    let cfg = config(tmp.path(), &n, &model, port);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("max_in_flight_jobs = 16", "max_in_flight_jobs = 2")
        .replace("pause_grace_ms = 200", "pause_grace_ms = 50\nbuffer = 2");
    std::fs::write(&cfg, text).unwrap();
    let daemon = start_daemon(&cfg, &tmp.path().join("daemon.log"), port);
    let results = consume(&n.results, jobs.len(), Duration::from_secs(180), Duration::from_secs(1));
    let log = daemon.log_text();
    assert!(daemon.stop().success(), "{log}");
    assert_eq!(results.len(), jobs.len(), "{log}");
    assert!(log.contains("paused (pipeline full)") && log.contains("resumed"), "{log}");
}

/// Throughput through Kafka and S3 against the raw model (not part of the suite: `cargo test --release --test
/// e2e_bulk -- --ignored --nocapture bench`). Encode jobs over the first `GLOWD_BENCH_JOBS` (256) CelebA images of
/// `$GLOWD_SHARED_DATA/celeba/img` with the face crop, on `GLOWD_BENCH_MODEL` (models/celeba-32), batch 16.
#[test]
#[ignore]
fn bench_encode_jobs_through_kafka_and_s3() {
    let _serial = serial();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let data = std::env::var("GLOWD_SHARED_DATA").map(PathBuf::from).unwrap_or(root.join("../shared/data"));
    let model = std::env::var("GLOWD_BENCH_MODEL").map(PathBuf::from).unwrap_or(root.join("models/celeba-32"));
    let count: usize = std::env::var("GLOWD_BENCH_JOBS").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(data.join("celeba/img")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files.truncate(count);
    let tmp = tempfile::tempdir().unwrap();
    let n = names("bench");
    let rt = runtime();
    let client = rt.block_on(s3());
    rt.block_on(async {
        create_topics(&n).await;
        for f in &files {
            put(
                &client,
                &format!("{}/{}", n.inputs, f.file_name().unwrap().to_str().unwrap()),
                std::fs::read(f).unwrap(),
            )
            .await;
        }
    });
    let jobs: Vec<String> = files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let uri = format!("s3://{}/{}/{}", bucket(), n.inputs, f.file_name().unwrap().to_str().unwrap());
            job(&format!("b-{i}"), "encode", json!({"input": uri}))
        })
        .collect();
    // The raw model at the same batch size: `glowd encode --batch 16` over the same files.
    let raw_out = tmp.path().join("raw");
    let t = Instant::now();
    let st = glowd()
        .args([
            "encode",
            "--model",
            model.to_str().unwrap(),
            "--batch",
            "16",
            "--crop",
            "10,25,80,95",
            "--out",
            raw_out.to_str().unwrap(),
        ])
        .args(files.iter().map(|f| f.to_str().unwrap()))
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let raw = files.len() as f64 / t.elapsed().as_secs_f64();
    let port = free_port();
    let cfg = config(tmp.path(), &n, &model, port);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("max_batch = 4", "max_batch = 16")
        .replace("threads = 1", "threads = 0")
        .replace("max_in_flight_jobs = 16", "max_in_flight_jobs = 64")
        + "\n[images]\ncrop = [10, 25, 80, 95]\n";
    std::fs::write(&cfg, text).unwrap();
    let daemon = start_daemon(&cfg, &tmp.path().join("daemon.log"), port);
    let t = Instant::now();
    rt.block_on(produce(&n.jobs, &jobs));
    let results = consume(&n.results, jobs.len(), Duration::from_secs(900), Duration::ZERO);
    let e2e = results.len() as f64 / t.elapsed().as_secs_f64();
    let mut latency: Vec<f64> = results
        .iter()
        .map(|r| {
            serde_json::from_slice::<Value>(&r.payload).unwrap()["timings"]["total_seconds"].as_f64().unwrap_or(0.0)
        })
        .collect();
    latency.sort_by(f64::total_cmp);
    let pct = |p: f64| latency[((latency.len() as f64 - 1.0) * p) as usize];
    let done = results.iter().filter(|r| String::from_utf8_lossy(&r.payload).contains("\"done\"")).count();
    let mean = |stage: &str| {
        results
            .iter()
            .map(|r| serde_json::from_slice::<Value>(&r.payload).unwrap()["timings"][stage].as_f64().unwrap_or(0.0))
            .sum::<f64>()
            / results.len().max(1) as f64
    };
    println!(
        "mean seconds per job: queued {:.4} fetch {:.4} decode {:.4} device {:.4} encode {:.4} put {:.4} total {:.4}",
        mean("queued_seconds"),
        mean("fetch_seconds"),
        mean("decode_seconds"),
        mean("device_seconds"),
        mean("encode_seconds"),
        mean("put_seconds"),
        mean("total_seconds")
    );

    // Half load: the same jobs again (new ids) at half the rate just measured; latency from the producer's send to
    // the result record's broker timestamp.
    let rate = e2e / 2.0;
    let half: Vec<(String, String)> = files
        .iter()
        .cycle()
        .take(((rate * 40.0) as usize).clamp(32, 1024))
        .enumerate()
        .map(|(i, f)| {
            let uri = format!("s3://{}/{}/{}", bucket(), n.inputs, f.file_name().unwrap().to_str().unwrap());
            (format!("h-{i}"), job(&format!("h-{i}"), "encode", json!({"input": uri})))
        })
        .collect();
    let topic = n.jobs.clone();
    let to_send = half.clone();
    let sender = std::thread::spawn(move || {
        let rt = runtime();
        let producer: FutureProducer = kafka().set("linger.ms", "0").create().unwrap();
        let t0 = Instant::now();
        let mut sent = HashMap::new();
        for (i, (id, payload)) in to_send.iter().enumerate() {
            let due = t0 + Duration::from_secs_f64(i as f64 / rate);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
            rt.block_on(producer.send(FutureRecord::<str, str>::to(&topic).payload(payload), Duration::from_secs(10)))
                .unwrap();
            sent.insert(id.clone(), ms);
        }
        sent
    });
    let c = daemon::reader(&kafka(), &format!("bench-half-{}", std::process::id()), &n.results);
    let mut finished: HashMap<String, i64> = HashMap::new();
    let t0 = Instant::now();
    while finished.len() < half.len() && t0.elapsed() < Duration::from_secs(900) {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            let v: Value = serde_json::from_slice(m.payload().unwrap_or_default()).unwrap();
            let id = v["job"].as_str().unwrap_or_default().to_string();
            if id.starts_with("h-") {
                finished.insert(id, m.timestamp().to_millis().unwrap_or(0));
            }
        }
    }
    let sent = sender.join().unwrap();
    let mut half_latency: Vec<f64> =
        finished.iter().map(|(id, done_ms)| (done_ms - sent[id]) as f64 / 1000.0).collect();
    half_latency.sort_by(f64::total_cmp);
    let half_pct = |p: f64| half_latency[((half_latency.len() as f64 - 1.0) * p) as usize];
    daemon.stop();
    println!(
        "jobs {} done {done}: raw `glowd encode --batch 16` {raw:.1} images/s; through Kafka + S3 {e2e:.1} jobs/s ({:.2} of raw); \
         job latency p50 {:.3} s p99 {:.3} s (at saturation, in-pipeline)",
        jobs.len(),
        e2e / raw,
        pct(0.5),
        pct(0.99)
    );
    println!(
        "half load ({rate:.1} jobs/s, {} jobs): latency from send to result record p50 {:.3} s p99 {:.3} s",
        half_latency.len(),
        half_pct(0.5),
        half_pct(0.99)
    );
    assert_eq!(done, jobs.len());
    assert_eq!(finished.len(), half.len());
}

/// G7, the soak: jobs arrive at twice the rate the daemon finishes them (re-measured every 10 s), for
/// `GLOWD_SOAK_MINUTES` (60) minutes, so the backlog grows the whole time. The daemon's RSS is sampled every 30 s;
/// after the first sixth (warm-up) its least-squares slope must stay under 5 MiB/h, and results must keep coming
/// in every interval (no stall). Not in the suite: `GLOWD_SOAK_MINUTES=60 cargo test --release --test e2e_bulk --
/// --ignored --nocapture soak`.
#[test]
#[ignore]
fn soak_at_twice_the_throughput_keeps_memory_flat() {
    let _serial = serial();
    let minutes: f64 = std::env::var("GLOWD_SOAK_MINUTES").ok().and_then(|v| v.parse().ok()).unwrap_or(60.0);
    let tmp = tempfile::tempdir().unwrap();
    let n = names("soak");
    // The heavier test model: tens of jobs per second, so an hour stays within what MinIO and the disk hold.
    let model = common::pipeline::model_with_directions_of(tmp.path(), &HEAVY);
    let rt = runtime();
    rt.block_on(create_topics(&n));
    let port = free_port();
    let daemon = start_daemon(&config(tmp.path(), &n, &model, port), &tmp.path().join("daemon.log"), port);
    let results = daemon::reader(&kafka(), &format!("soak-reader-{}", std::process::id()), &n.results);
    let rss_mib = || -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.child.id())).unwrap();
        let kib: f64 = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
        kib / 1024.0
    };
    let (t0, end) = (Instant::now(), Duration::from_secs_f64(minutes * 60.0));
    let (mut produced, mut done, mut done_at_window) = (0usize, 0usize, 0usize);
    let (mut window, mut sample_at) = (Instant::now(), Instant::now());
    let mut per_second = 20usize;
    let mut samples: Vec<(f64, f64)> = Vec::new();
    let (mut stalls, mut done_at_sample) = (0usize, 0usize);
    while t0.elapsed() < end {
        let second = Instant::now();
        let batch: Vec<String> = (produced..produced + per_second)
            .map(|i| job(&format!("soak-{i}"), "sample", json!({"n": 1, "seed": i % 97})))
            .collect();
        rt.block_on(produce(&n.jobs, &batch));
        produced += per_second;
        while second.elapsed() < Duration::from_secs(1) {
            if let Some(Ok(_)) = results.poll(Duration::from_millis(50)) {
                done += 1;
            }
        }
        if window.elapsed() >= Duration::from_secs(10) {
            // Twice what was finished over the last 10 s, so the backlog keeps growing.
            let rate = (done - done_at_window) as f64 / window.elapsed().as_secs_f64();
            per_second = ((2.0 * rate).ceil() as usize).max(10);
            done_at_window = done;
            window = Instant::now();
        }
        if sample_at.elapsed() >= Duration::from_secs(30) {
            if done == done_at_sample {
                stalls += 1;
            }
            done_at_sample = done;
            samples.push((t0.elapsed().as_secs_f64() / 3600.0, rss_mib()));
            // One line per sample, so a long run can be watched and its curve kept.
            println!(
                "soak: {:5.1} min  RSS {:6.1} MiB  {produced} produced  {done} done  {per_second}/s offered",
                t0.elapsed().as_secs_f64() / 60.0,
                samples.last().unwrap().1
            );
            sample_at = Instant::now();
        }
    }
    let log = daemon.log_text();
    assert!(daemon.stop().success(), "{log}");
    let after: Vec<(f64, f64)> = samples.iter().cloned().filter(|(h, _)| *h >= minutes / 60.0 / 6.0).collect();
    assert!(after.len() >= 3, "too few samples after warm-up: {samples:?}");
    let mean = |f: &dyn Fn(&(f64, f64)) -> f64| after.iter().map(f).sum::<f64>() / after.len() as f64;
    let (mh, mr) = (mean(&|s| s.0), mean(&|s| s.1));
    let slope = after.iter().map(|(h, r)| (h - mh) * (r - mr)).sum::<f64>() / after.iter().map(|(h, _)| (h - mh).powi(2)).sum::<f64>();
    let (min, max) = after.iter().fold((f64::MAX, 0.0f64), |(a, b), (_, r)| (a.min(*r), b.max(*r)));
    println!(
        "soak: {minutes} min at twice the throughput: {produced} jobs produced, {done} done (backlog {}), RSS after \
         warm-up {min:.0}–{max:.0} MiB, slope {slope:+.2} MiB/h, {stalls} intervals of 30 s without a result",
        produced - done
    );
    assert!(produced > done + 100, "the load never outran the daemon: {produced} produced, {done} done");
    assert_eq!(stalls, 0, "results stopped for a 30-s interval {stalls} times\n{log}");
    assert!(slope.abs() < 5.0, "RSS slope {slope:.2} MiB/h over {after:?}");
}

/// Peak RSS of the daemon after 1,000 jobs with a 1k and with a 100k backlog in the topic (not part of the suite:
/// `cargo test --release --test e2e_bulk -- --ignored --nocapture bench_rss`). The consumer's prefetch, the
/// pipeline's in-flight limit and its channels are bounded, so the backlog must not show in memory.
#[test]
#[ignore]
fn bench_rss_with_a_1k_and_a_100k_backlog() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let model = common::pipeline::model_with_directions(tmp.path());
    let rt = runtime();
    let mut peaks = Vec::new();
    for backlog in [1_000usize, 100_000] {
        let n = names(&format!("rss{backlog}"));
        rt.block_on(create_topics(&n));
        let t = Instant::now();
        let jobs: Vec<String> =
            (0..backlog).map(|i| job(&format!("r-{i}"), "sample", json!({"n": 1, "seed": i % 97}))).collect();
        for chunk in jobs.chunks(5_000) {
            rt.block_on(produce(&n.jobs, chunk));
        }
        println!("produced {backlog} jobs in {:.1} s", t.elapsed().as_secs_f64());
        let port = free_port();
        let dir = tmp.path().join(backlog.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let daemon = start_daemon(&config(&dir, &n, &model, port), &dir.join("daemon.log"), port);
        let results = consume(&n.results, 1_000, Duration::from_secs(600), Duration::ZERO);
        let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.child.id())).unwrap();
        let kib = |key: &str| -> u64 {
            status.lines().find(|l| l.starts_with(key)).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap()
        };
        let (hwm, rss) = (kib("VmHWM:"), kib("VmRSS:"));
        daemon.stop();
        assert!(results.len() >= 1_000);
        println!("backlog {backlog}: peak RSS {} MiB (now {} MiB) after {} results", hwm / 1024, rss / 1024, results.len());
        peaks.push(hwm as f64);
    }
    println!("peak RSS 100k backlog / 1k backlog: {:.3}", peaks[1] / peaks[0]);
}
