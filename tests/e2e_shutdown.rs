//! Daemons stopping, crashing and coming and going, against the dev stack (`scripts/dev-stack up`): a clean stop
//! (SIGTERM) after which a restart reprocesses nothing, SIGTERM mid-stream over and over (G3), SIGKILL mid-run with
//! outputs byte-identical to a clean run, and a rebalance between two daemons of one group (classic and KIP-848).
//!
//! Each test uses its own topics, consumer group and key prefixes, so tests (and reruns) never see each other's
//! records. They run one at a time (a lock): two daemons and the broker on two cores would only be slower.
mod common;
use common::daemon::{self, free_port, job, runtime, serial};
use common::e2e::*;
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::Message;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[test]
fn restart_after_a_clean_stop_reprocesses_nothing() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let n = names("restart");
    let model = common::pipeline::model_with_directions(tmp.path());
    let rt = runtime();
    rt.block_on(create_topics(&n));
    let first: Vec<String> = (0..12).map(|i| job(&format!("s-{i}"), "sample", json!({"n": 1}))).collect();
    let second: Vec<String> = (12..18).map(|i| job(&format!("s-{i}"), "sample", json!({"n": 1}))).collect();
    let port = free_port();
    let cfg = config(tmp.path(), &n, &model, port);
    let log = tmp.path().join("daemon.log");

    let daemon = start_daemon(&cfg, &log, port);
    rt.block_on(produce(&n.jobs, &first));
    let results = consume(&n.results, first.len(), Duration::from_secs(180), Duration::ZERO);
    assert_eq!(results.len(), first.len(), "{}", daemon.log_text());
    let exit = daemon.stop();
    assert!(exit.success(), "{exit:?}");

    rt.block_on(produce(&n.jobs, &second));
    let daemon = start_daemon(&cfg, &log, port);
    let results = consume(&n.results, first.len() + second.len(), Duration::from_secs(180), Duration::from_secs(5));
    let exit = daemon.stop();
    assert!(exit.success(), "{exit:?}");
    let mut per_job: BTreeMap<String, usize> = BTreeMap::new();
    for r in &results {
        let v: Value = serde_json::from_slice(&r.payload).unwrap();
        *per_job.entry(v["job"].as_str().unwrap().to_string()).or_default() += 1;
    }
    assert_eq!(per_job.len(), 18, "{per_job:?}");
    assert!(per_job.values().all(|&c| c == 1), "a job was processed twice: {per_job:?}");
}

/// Reads a results topic from its start and keeps counting `done` records per job as it is polled.
struct ResultCounter {
    consumer: BaseConsumer,
    per_job: BTreeMap<String, usize>,
}

impl ResultCounter {
    fn new(topic: &str) -> ResultCounter {
        let consumer = daemon::reader(&kafka(), &format!("counter-{}-{}", topic, std::process::id()), topic);
        ResultCounter { consumer, per_job: BTreeMap::new() }
    }

    /// Polls until `until` says stop or `timeout` passes.
    fn poll_until(&mut self, timeout: Duration, mut until: impl FnMut(&BTreeMap<String, usize>) -> bool) {
        let t0 = Instant::now();
        while t0.elapsed() < timeout && !until(&self.per_job) {
            if let Some(Ok(m)) = self.consumer.poll(Duration::from_millis(100)) {
                let v: Value = serde_json::from_slice(m.payload().unwrap_or_default()).unwrap();
                assert_eq!(v["status"], "done", "{v}");
                *self.per_job.entry(v["job"].as_str().unwrap().to_string()).or_default() += 1;
            }
        }
    }

    fn done(&self) -> usize {
        self.per_job.values().sum()
    }
}

struct Bounces {
    jobs: usize,
    lost: usize,
    reprocessed: usize,
    exit_seconds: Vec<f64>,
}

/// G3: `bounces` times, start the daemon, let results flow, SIGTERM it mid-stream (jobs in flight and a backlog
/// behind them) and time its exit; then a last start runs the stream to its end. Counts jobs without a result and
/// jobs with more than one.
fn sigterm_bounces(test: &str, bounces: usize, jobs_per_bounce: usize) -> Bounces {
    let Workload { tmp, n, model, rt, ids, jobs, .. } = workload(test, &[], bounces * jobs_per_bounce + 20);
    rt.block_on(produce(&n.jobs, &jobs));
    let port = free_port();
    let cfg = config(tmp.path(), &n, &model, port);
    let log = tmp.path().join("daemon.log");
    let mut counter = ResultCounter::new(&n.results);
    let mut exit_seconds = Vec::new();
    for b in 0..bounces {
        let daemon = start_daemon(&cfg, &log, port);
        let target = counter.done() + jobs_per_bounce / 2;
        counter.poll_until(Duration::from_secs(120), |m| m.values().sum::<usize>() >= target);
        assert!(counter.done() >= target, "bounce {b}: no results flowing");
        let t0 = Instant::now();
        let exit = daemon.stop();
        exit_seconds.push(t0.elapsed().as_secs_f64());
        assert!(exit.success(), "bounce {b}: {exit:?}\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    }
    let daemon = start_daemon(&cfg, &log, port);
    let want = ids.len();
    counter.poll_until(Duration::from_secs(300), |m| m.len() >= want);
    counter.poll_until(Duration::from_secs(3), |_| false);
    assert!(daemon.stop().success());
    let lost = ids.iter().filter(|id| !counter.per_job.contains_key(*id)).count();
    let reprocessed = counter.per_job.values().map(|c| c - 1).sum();
    Bounces { jobs: ids.len(), lost, reprocessed, exit_seconds }
}

fn assert_exact(b: &Bounces) {
    let max = b.exit_seconds.iter().cloned().fold(0.0, f64::max);
    println!(
        "sigterm bounces: {} bounces over {} jobs: {} lost, {} reprocessed, exit after SIGTERM max {max:.1} s (drain timeout 20 s)",
        b.exit_seconds.len(),
        b.jobs,
        b.lost,
        b.reprocessed
    );
    assert_eq!(b.lost, 0, "jobs lost over the bounces");
    assert_eq!(b.reprocessed, 0, "a clean stop must not leave finished work uncommitted");
    // The config's drain timeout is 20 s; docs/reliability.md's rule is grace − 5 s.
    assert!(max <= 15.0, "an exit took {max:.1} s: {:?}", b.exit_seconds);
}

#[test]
fn sigterm_mid_stream_five_times_reprocesses_nothing_and_loses_nothing() {
    let _serial = serial();
    assert_exact(&sigterm_bounces("bounce", 5, 24));
}

/// The full G3 run: `cargo test --release --test e2e_shutdown -- --ignored --nocapture sigterm_twenty`.
#[test]
#[ignore]
fn sigterm_twenty_times() {
    let _serial = serial();
    assert_exact(&sigterm_bounces("bounce20", 20, 24));
}

#[test]
fn sigkill_during_a_batch_then_restart_writes_every_output_identical_to_a_clean_run() {
    let _serial = serial();
    let Workload { tmp, n, model, rt, client, ids, jobs } = workload("sigkill", &HEAVY, 90);
    rt.block_on(produce(&n.jobs, &jobs));

    // The clean reference: one daemon, start to finish.
    let port = free_port();
    let reference = n.variant("ref");
    rt.block_on(create_topic(&reference.results, 1));
    let dir = tmp.path().join("ref");
    std::fs::create_dir_all(&dir).unwrap();
    let daemon = start_daemon(&config(&dir, &reference, &model, port), &dir.join("daemon.log"), port);
    let seen = done_results(&reference.results, &ids, Duration::from_secs(240));
    let log = daemon.log_text();
    assert!(daemon.stop().success(), "{log}");
    assert_eq!(seen.len(), ids.len(), "{log}");

    // The same jobs in another group: SIGKILL once results flow (batches in flight), restart, run to the end.
    let crashed = n.variant("kill");
    rt.block_on(create_topic(&crashed.results, 1));
    let dir = tmp.path().join("kill");
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = config(&dir, &crashed, &model, port);
    short_session(&cfg);
    let mut daemon = start_daemon(&cfg, &dir.join("daemon.log"), port);
    let first = done_results(&crashed.results, &ids[..1], Duration::from_secs(120));
    assert!(!first.is_empty(), "no result before the kill:\n{}", daemon.log_text());
    daemon.child.kill().unwrap(); // SIGKILL: no drain, no commit
    daemon.child.wait().unwrap();
    let before_restart = committed(&crashed, 3).iter().sum::<i64>();
    let daemon = start_daemon(&cfg, &dir.join("daemon.log"), port);
    let seen = done_results(&crashed.results, &ids, Duration::from_secs(240));
    // The restarted daemon redoes what the killed one had not committed (outputs that exist answer 412).
    let after = wait_committed(&crashed, ids.len() as i64, Duration::from_secs(120));
    let log = daemon.log_text();
    assert!(daemon.stop().success(), "{log}");
    assert_eq!(seen.len(), ids.len(), "jobs lost after the SIGKILL: {seen:?}\n{log}");
    assert!(before_restart < ids.len() as i64, "the kill came after everything was committed");
    assert_eq!(after, ids.len() as i64, "committed after the restart (before: {before_restart})\n{log}");
    assert_eq!(committed(&crashed, 3).iter().sum::<i64>(), ids.len() as i64);
    let duplicates: usize = seen.values().map(|c| c - 1).sum();
    println!("sigkill: {before_restart} of {} jobs committed at the kill, {duplicates} redone", ids.len());

    // Every output of the crashed run is byte-identical to the clean run's (manifests and claims name their own prefix).
    let (want, got) = rt.block_on(async {
        (objects(&client, &reference.outputs).await, objects(&client, &crashed.outputs).await)
    });
    assert_eq!(want.keys().collect::<Vec<_>>(), got.keys().collect::<Vec<_>>());
    assert!(want.len() > ids.len(), "{} objects", want.len());
    for (key, bytes) in &want {
        // The claim (`work.json`) lists the keys it is about to write, so it names its prefix too.
        let bytes = if key.ends_with("manifest.json") || key.ends_with("work.json") {
            String::from_utf8(bytes.clone()).unwrap().replace(&reference.outputs, &crashed.outputs).into_bytes()
        } else {
            bytes.clone()
        };
        assert!(bytes == got[key], "{key} differs from the clean run");
    }
}

#[test]
fn two_daemons_in_one_group_rebalance_mid_run_without_losing_a_job() {
    let _serial = serial();
    rebalance_mid_run("rebalance", None);
}

/// The same with the broker-driven consumer group protocol of KIP-848 (Kafka 4), `group.protocol=consumer`.
#[test]
fn two_daemons_rebalance_mid_run_with_the_kip_848_protocol() {
    let _serial = serial();
    rebalance_mid_run("kip848", Some("consumer"));
}

fn rebalance_mid_run(test: &str, group_protocol: Option<&str>) {
    let Workload { tmp, n, model, ids, jobs, .. } = workload(test, &HEAVY, 160);
    let (port_a, port_b) = (free_port(), free_port());
    let (dir_a, dir_b) = (tmp.path().join("a"), tmp.path().join("b"));
    std::fs::create_dir_all(&dir_a).unwrap();
    std::fs::create_dir_all(&dir_b).unwrap();
    let (cfg_a, cfg_b) = (config(&dir_a, &n, &model, port_a), config(&dir_b, &n, &model, port_b));
    for cfg in [&cfg_a, &cfg_b] {
        match group_protocol {
            // The session timeout is the broker's (group.consumer.session.timeout.ms) under KIP-848.
            Some(p) => kafka_properties(cfg, &[("group.protocol", p)]),
            None => short_session(cfg),
        }
    }
    let a = start_daemon(&cfg_a, &dir_a.join("daemon.log"), port_a);
    // Jobs arrive steadily (10 every 0.4 s, about 6 s in all), so both rebalances happen with jobs in flight.
    let topic = n.jobs.clone();
    let producer = std::thread::spawn(move || {
        let rt = runtime();
        for chunk in jobs.chunks(10) {
            rt.block_on(produce(&topic, chunk));
            std::thread::sleep(Duration::from_millis(400));
        }
    });
    assert!(!done_results(&n.results, &ids[..1], Duration::from_secs(120)).is_empty(), "{}", a.log_text());
    // B joins while A is mid-run (partitions move to B), then A leaves (its partitions move to B).
    let b = start_daemon(&cfg_b, &dir_b.join("daemon.log"), port_b);
    // Until the group has moved partitions to B (under KIP-848 the broker does it on a heartbeat, every few s).
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(30)
        && !(a.log_text().contains("partition revoked") && b.log_text().contains("partition assigned"))
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    let log_a = a.log_text();
    assert!(a.stop().success(), "{log_a}");
    let done_when_a_left = done_results(&n.results, &ids, Duration::from_secs(1)).len();
    producer.join().unwrap();
    let seen = done_results(&n.results, &ids, Duration::from_secs(240));
    wait_committed(&n, ids.len() as i64, Duration::from_secs(60));
    let log_b = b.log_text();
    assert!(b.stop().success(), "{log_b}");
    assert_eq!(seen.len(), ids.len(), "jobs lost in the rebalance: {seen:?}\nA:\n{log_a}\nB:\n{log_b}");
    assert!(log_b.contains("partition assigned"), "B never got partitions:\n{log_b}");
    assert!(log_a.contains("partition revoked"), "B's arrival took no partition from A:\n{log_a}");
    assert_eq!(committed(&n, 3).iter().sum::<i64>(), ids.len() as i64, "offsets after both stopped");
    let dlq = consume(&n.dlq, 0, Duration::from_secs(2), Duration::ZERO);
    assert!(dlq.is_empty());
    let duplicates: usize = seen.values().map(|c| c - 1).sum();
    assert!(done_when_a_left < ids.len(), "everything was done before A left: no rebalance mid-run");
    println!(
        "rebalance ({}): {} jobs, {done_when_a_left} done when A left, {duplicates} processed twice",
        group_protocol.unwrap_or("classic"),
        ids.len()
    );
}

/// The first record on `topic` stamped at or after `after_ms` (ms since the Unix epoch): its timestamp.
fn first_record_at_or_after(topic: &str, after_ms: i64, timeout: Duration) -> Option<i64> {
    let c = daemon::reader(&kafka(), &format!("first-{topic}-{after_ms}"), topic);
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if let Some(Ok(m)) = rdkafka::consumer::BaseConsumer::poll(&c, Duration::from_millis(200)) {
            if let Some(ts) = m.timestamp().to_millis().filter(|&ts| ts >= after_ms) {
                return Some(ts);
            }
        }
    }
    None
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// What a SIGKILL of both daemons of a group and their restart at once cost.
struct Restart {
    /// From the restart (both processes spawned) to the first result either of them published.
    pause: Duration,
    /// From the restart until both said ready.
    ready: Duration,
    jobs: usize,
}

/// Issue 16 item 10: two daemons of one group (librdkafka's default session timeout, 45 s) consume a flowing run; both
/// are SIGKILLed and restarted at once. With `static_ids` each has its own `kafka.instance_id`, kept across the
/// restart. Every job is still done and nothing is dead-lettered; returns the pause.
fn sigkill_both_and_restart(test: &str, static_ids: bool) -> Restart {
    let Workload { tmp, n, model, rt, ids, jobs, .. } = workload(test, &HEAVY, 1500);
    rt.block_on(produce(&n.jobs, &jobs));
    let mut members = Vec::new();
    for name in ["a", "b"] {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let cfg = config(&dir, &n, &model, port);
        if static_ids {
            let text = std::fs::read_to_string(&cfg).unwrap();
            let text = text.replace("pause_grace_ms = 200\n", &format!("pause_grace_ms = 200\ninstance_id = \"{test}-{name}\"\n"));
            std::fs::write(&cfg, text).unwrap();
        }
        members.push((cfg, dir.join("daemon.log"), port));
    }
    let daemons: Vec<_> = members.iter().map(|(cfg, log, port)| start_daemon(cfg, log, *port)).collect();
    // Both consume (each has partitions and results flow), then both die without a word.
    let t0 = Instant::now();
    while !daemons.iter().all(|d| d.log_text().contains("partition assigned")) {
        assert!(t0.elapsed() < Duration::from_secs(60), "not both assigned");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!done_results(&n.results, &ids[..1], Duration::from_secs(120)).is_empty());
    for mut d in daemons {
        d.child.kill().unwrap();
        d.child.wait().unwrap();
    }
    let done_at_kill = done_results(&n.results, &ids, Duration::from_secs(2)).len();
    let restart_ms = now_ms();
    let restarted = Instant::now();
    let daemons: Vec<_> = members.iter().map(|(cfg, log, _)| daemon::Daemon::spawn(cfg, stack(), &[], log)).collect();
    for ((_, _, port), d) in members.iter().zip(&daemons) {
        d.wait_ready(*port);
    }
    let ready = restarted.elapsed();
    // Records are matched by their timestamp, so reading them after the readiness wait misses nothing.
    let first = first_record_at_or_after(&n.results, restart_ms, Duration::from_secs(180));
    let seen = done_results(&n.results, &ids, Duration::from_secs(600));
    let logs: Vec<String> = daemons.iter().map(|d| d.log_text()).collect();
    for d in daemons {
        assert!(d.stop().success());
    }
    assert!(done_at_kill < ids.len(), "everything was done before the kill");
    let first = first.unwrap_or_else(|| panic!("no result within 180 s of the restart\n{}", logs.join("\n")));
    assert_eq!(seen.len(), ids.len(), "jobs lost over the SIGKILL and restart\n{}", logs.join("\n"));
    assert!(consume(&n.dlq, 0, Duration::from_secs(2), Duration::ZERO).is_empty());
    let pause = Duration::from_millis((first - restart_ms).max(0) as u64);
    println!(
        "{test}: SIGKILL of both daemons with {done_at_kill} of {} jobs done, restart at once: first result {:.1} s \
         after the restart ({}), both ready after {:.1} s",
        ids.len(),
        pause.as_secs_f64(),
        if static_ids { "static membership" } else { "dynamic members" },
        ready.as_secs_f64()
    );
    Restart { pause, ready, jobs: ids.len() }
}

/// Static membership: a SIGKILLed daemon restarted under the same `kafka.instance_id` takes its partitions back at
/// once; the first result comes within 5 s of the restart (the goal), start-up included.
#[test]
fn a_sigkilled_group_restarted_with_static_ids_resumes_within_seconds() {
    let _serial = serial();
    let r = sigkill_both_and_restart("static", true);
    assert!(r.pause < Duration::from_secs(5), "first result {:?} after the restart ({} jobs, ready after {:?})", r.pause, r.jobs, r.ready);
}

/// The same without static membership: the group waits for the dead members' sessions to time out (45 s) before
/// anyone consumes. Not in the suite (a minute of waiting); the README's figure.
/// `cargo test --release --test e2e_shutdown -- --ignored --nocapture dynamic_members`
#[test]
#[ignore]
fn a_sigkilled_group_of_dynamic_members_stalls_until_their_sessions_time_out() {
    let _serial = serial();
    let r = sigkill_both_and_restart("dynamic", false);
    assert!(r.pause > Duration::from_secs(30), "first result {:?} after the restart", r.pause);
}

/// Scale-down with static membership: a static member stopped cleanly (SIGTERM, as Kubernetes stops a pod it
/// removes) still leaves the group, so the other member is assigned its partitions at once rather than after the
/// session timeout (45 s here), and every job is done.
#[test]
fn a_static_member_stopped_cleanly_hands_its_partitions_over_at_once() {
    let _serial = serial();
    let Workload { tmp, n, model, rt, ids, jobs, .. } = workload("staticleave", &HEAVY, 1000);
    rt.block_on(produce(&n.jobs, &jobs));
    let mut daemons = Vec::new();
    for name in ["a", "b"] {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let cfg = config(&dir, &n, &model, port);
        let text = std::fs::read_to_string(&cfg).unwrap();
        let text = text.replace("pause_grace_ms = 200\n", &format!("pause_grace_ms = 200\ninstance_id = \"staticleave-{name}\"\n"));
        std::fs::write(&cfg, text).unwrap();
        daemons.push(start_daemon(&cfg, &dir.join("daemon.log"), port));
    }
    let b = daemons.pop().unwrap();
    let a = daemons.pop().unwrap();
    let assigned = |log: &str| log.matches("partition assigned").count();
    let t0 = Instant::now();
    while assigned(&a.log_text()) == 0 || assigned(&b.log_text()) == 0 {
        assert!(t0.elapsed() < Duration::from_secs(60), "not both assigned\nA:\n{}\nB:\n{}", a.log_text(), b.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    let before = assigned(&b.log_text());
    let log_a = a.log_text();
    assert!(a.stop().success(), "{log_a}");
    let stopped = Instant::now();
    while assigned(&b.log_text()) == before && stopped.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let handover = stopped.elapsed();
    let seen = done_results(&n.results, &ids, Duration::from_secs(600));
    let log_b = b.log_text();
    assert!(b.stop().success(), "{log_b}");
    println!("static member stopped cleanly: its partitions assigned to the other {:.1} s after it exited", handover.as_secs_f64());
    assert!(handover < Duration::from_secs(10), "partitions handed over {handover:?} after the clean stop\n{log_b}");
    assert_eq!(seen.len(), ids.len(), "{log_b}");
}
