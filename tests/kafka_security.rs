//! G17 (docs/reliability.md): TLS/SASL enforcement against a real broker. `scripts/dev-stack secure-up` starts a second
//! Kafka 4.1.1 broker with SASL_SSL + SCRAM-SHA-512 listeners (a throwaway CA; one listener's certificate names
//! localhost/127.0.0.1, the other's only wrong-host.invalid); the plain dev stack's MinIO is the S3 server.
//!
//! - the right user, password and CA: `glowd serve` becomes ready and does one encode job end to end;
//! - a wrong password, or a broker certificate for another host name: the daemon exits non-zero within 30 s with
//!   a clear error, `/readyz` never says 200, and the password never reaches the log;
//! - no plaintext fallback: a daemon configured for PLAINTEXT against the SASL_SSL port is never ready, exits
//!   non-zero and processes nothing; one configured for SASL_SSL, pointed at a listener that speaks plaintext,
//!   opens every connection with a TLS ClientHello (never a Kafka request in clear) and exits non-zero.
//!
//! Tests run one at a time (a lock), each with its own topics, group and key prefixes.
mod common;
use common::daemon::{self, free_port, http_get, job, runtime, serial, Daemon, Names, Record};
use aws_sdk_s3::primitives::ByteStream;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How soon a daemon that cannot talk to the broker must be gone (G17 in docs/reliability.md).
const FAIL_FAST: Duration = Duration::from_secs(30);

/// `scripts/dev-stack up` + `secure-up`, once per test binary (both idempotent); their `env` and `secure-env`.
fn stack() -> &'static HashMap<String, String> {
    static STACK: OnceLock<HashMap<String, String>> = OnceLock::new();
    STACK.get_or_init(|| daemon::dev_stack(&[("up", "env"), ("secure-up", "secure-env")]))
}

fn names(test: &str) -> Names {
    Names::new("sec", test)
}

fn bucket() -> String {
    stack()["S3_BUCKET"].clone()
}

/// A client of the secure broker with the right user, password and CA (the tests' own producer, reader, admin).
fn secure_client() -> ClientConfig {
    let env = stack();
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &env["SECURE_KAFKA_BROKERS"])
        .set("security.protocol", "SASL_SSL")
        .set("sasl.mechanism", &env["SECURE_KAFKA_MECHANISM"])
        .set("sasl.username", &env["SECURE_KAFKA_USER"])
        .set("sasl.password", &env["SECURE_KAFKA_PASSWORD"])
        .set("ssl.ca.location", &env["SECURE_KAFKA_CA"]);
    c
}

async fn create_topics(n: &Names) {
    let admin: AdminClient<DefaultClientContext> = secure_client().create().unwrap();
    let topics = [
        NewTopic::new(&n.jobs, 2, TopicReplication::Fixed(1)),
        NewTopic::new(&n.results, 1, TopicReplication::Fixed(1)),
        NewTopic::new(&n.dlq, 1, TopicReplication::Fixed(1)),
    ];
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in admin.create_topics(&topics, &opts).await.unwrap() {
        r.unwrap();
    }
}

async fn produce(topic: &str, payloads: &[String]) {
    let producer: FutureProducer = secure_client().set("acks", "all").create().unwrap();
    for (i, p) in payloads.iter().enumerate() {
        let key = format!("k{i}");
        producer.send(FutureRecord::to(topic).payload(p).key(&key), Duration::from_secs(30)).await.unwrap();
    }
}

/// Reads `topic` of the secure broker from the start until `want` records arrived or `timeout` passed.
fn consume(topic: &str, want: usize, timeout: Duration) -> Vec<Record> {
    daemon::consume(&secure_client(), topic, want, timeout, Duration::ZERO)
}

async fn s3() -> aws_sdk_s3::Client {
    daemon::s3_client(stack())
}

/// The pipeline file: `brokers` and `[kafka.properties]` as given (`sasl.password` as `${GLOWD_TEST_KAFKA_PASSWORD}`,
/// set in the daemon's environment), the dev stack's MinIO, a tiny model.
fn config(dir: &Path, n: &Names, model: &Path, port: u16, brokers: &str, properties: &[(&str, &str)]) -> PathBuf {
    daemon::pipeline_toml(dir, n, model, port, stack(), brokers, properties)
}

/// The secure listener's client properties for the dev stack's user, the password by reference.
fn sasl_ssl_properties() -> Vec<(&'static str, &'static str)> {
    sasl_ssl_properties_for(&stack()["SECURE_KAFKA_USER"])
}

fn sasl_ssl_properties_for(user: &str) -> Vec<(&'static str, &'static str)> {
    vec![
        ("security.protocol", "SASL_SSL"),
        ("sasl.mechanism", "SCRAM-SHA-512"),
        ("sasl.username", Box::leak(user.to_string().into_boxed_str())),
        ("sasl.password", "${GLOWD_TEST_KAFKA_PASSWORD}"),
        ("ssl.ca.location", Box::leak(stack()["SECURE_KAFKA_CA"].clone().into_boxed_str())),
    ]
}

/// Sets a SCRAM-SHA-512 credential on the secure broker (over its internal listener, with Kafka's ConfigCommand).
fn set_scram_password(user: &str, password: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/dev-stack");
    let out = Command::new(&script)
        .args(["kafka-run", "kafka.admin.ConfigCommand", "--bootstrap-server", &stack()["SECURE_KAFKA_INTERNAL_BROKERS"]])
        .args(["--alter", "--entity-type", "users", "--entity-name", user, "--add-config"])
        .arg(format!("SCRAM-SHA-512=[iterations=4096,password={password}]"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ConfigCommand for {user}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `glowd serve` with `password` as GLOWD_TEST_KAFKA_PASSWORD. Does not wait.
fn spawn_daemon(config: &Path, password: &str, log: &Path) -> Daemon {
    Daemon::spawn(config, stack(), &[("GLOWD_TEST_KAFKA_PASSWORD".into(), password.into())], log)
}

/// A daemon that must fail fast: exited non-zero within FAIL_FAST, `/readyz` answered (so it was watched) but
/// never 200, neither password in the log. Returns the log.
fn assert_fails_fast(mut d: Daemon, port: u16, what: &str, wrong_password: Option<&str>) -> String {
    let (exit, took, seen) = d.watch_until_exit(port, FAIL_FAST + Duration::from_secs(30));
    let log = d.log_text();
    let exit = exit.unwrap_or_else(|| panic!("{what}: still running after {took:?}, /readyz {seen:?}:\n{log}"));
    eprintln!("{what}: exited {exit} after {:.1} s; /readyz seen: {:?}", took.as_secs_f64(), dedup(&seen));
    assert!(!exit.success(), "{what}: exit {exit}:\n{log}");
    assert!(took < FAIL_FAST, "{what}: took {took:?} to fail (limit {FAIL_FAST:?}):\n{log}");
    assert!(!seen.contains(&200), "{what}: /readyz said 200 at some point ({:?}):\n{log}", dedup(&seen));
    // Stopped at the start-up check: the consumer never started, so it never joined the group (or was ready).
    assert!(!log.contains("kafka consumer polling"), "{what}: the consumer started:\n{log}");
    let right = &stack()["SECURE_KAFKA_PASSWORD"];
    for (name, pw) in [("the right password", Some(right.as_str())), ("the wrong password", wrong_password)] {
        if let Some(pw) = pw {
            assert!(!log.contains(pw), "{what}: {name} appears in the log:\n{log}");
        }
    }
    log
}

fn dedup(v: &[u16]) -> Vec<u16> {
    let mut out: Vec<u16> = v.to_vec();
    out.dedup();
    out
}

/// The line `glowd serve` exits with (`glowd: error: …`).
fn error_line(log: &str) -> &str {
    log.lines().rev().find(|l| l.starts_with("glowd: error:")).unwrap_or("")
}

#[test]
fn sasl_ssl_with_scram_and_the_right_ca_processes_a_job_end_to_end() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let n = names("ok");
    let model = common::pipeline::model_with_directions(tmp.path());
    let rt = runtime();
    let client = rt.block_on(s3());
    let input = format!("{}/face.png", n.inputs);
    rt.block_on(async {
        create_topics(&n).await;
        client
            .put_object()
            .bucket(bucket())
            .key(&input)
            .body(ByteStream::from(common::pipeline::png_bytes(32, 32, 7)))
            .send()
            .await
            .unwrap();
    });
    let port = free_port();
    let cfg = config(tmp.path(), &n, &model, port, &stack()["SECURE_KAFKA_BROKERS"], &sasl_ssl_properties());
    let d = spawn_daemon(&cfg, &stack()["SECURE_KAFKA_PASSWORD"], &tmp.path().join("daemon.log"));
    d.wait_ready(port);
    eprintln!("ready after {:.1} s", d.started.elapsed().as_secs_f64());
    let t0 = Instant::now();
    rt.block_on(produce(&n.jobs, &[job("enc-1", "encode", json!({"input": format!("s3://{}/{input}", bucket())}))]));
    let results = consume(&n.results, 1, Duration::from_secs(120));
    eprintln!("encode job's result after {:.1} s", t0.elapsed().as_secs_f64());
    let log = d.log_text();
    assert_eq!(results.len(), 1, "no result record:\n{log}");
    let r: Value = serde_json::from_slice(&results[0].payload).unwrap();
    assert_eq!(r["status"], "done", "{r}\n{log}");
    assert_eq!(r["job"], "enc-1", "{r}");
    let outputs: Vec<String> = r["outputs"].as_array().unwrap().iter().map(|o| o.as_str().unwrap().to_string()).collect();
    assert!(outputs.iter().any(|k| k.ends_with("enc-1/latents.safetensors")), "{r}");
    rt.block_on(async {
        for key in &outputs {
            assert!(key.starts_with(&n.outputs), "{key}");
            let o = client.get_object().bucket(bucket()).key(key).send().await.unwrap_or_else(|e| panic!("{key}: {e}"));
            assert!(!o.body.collect().await.unwrap().into_bytes().is_empty(), "{key} is empty");
        }
    });
    assert!(log.contains("kafka: broker answered"), "{log}");
    let exit = d.stop();
    assert!(exit.success(), "exit {exit}:\n{log}");
    assert!(!log.contains(stack()["SECURE_KAFKA_PASSWORD"].as_str()), "the password appears in the log");
}

#[test]
fn a_wrong_password_fails_fast_with_an_authentication_error_and_is_never_ready() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let n = names("badpw");
    let model = common::pipeline::model_with_directions(tmp.path());
    let port = free_port();
    let cfg = config(tmp.path(), &n, &model, port, &stack()["SECURE_KAFKA_BROKERS"], &sasl_ssl_properties());
    let wrong = format!("wrong-pw-canary-{}", std::process::id());
    let d = spawn_daemon(&cfg, &wrong, &tmp.path().join("daemon.log"));
    let log = assert_fails_fast(d, port, "wrong password", Some(&wrong));
    let line = error_line(&log);
    eprintln!("wrong password: {line}");
    assert!(line.contains("kafka: authentication failed (SASL SCRAM-SHA-512"), "{log}");
    assert!(line.contains(&stack()["SECURE_KAFKA_BROKERS"]), "the broker is not named: {line}");
}

#[test]
fn a_broker_certificate_for_another_host_fails_fast_with_a_verification_error() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let n = names("badhost");
    let model = common::pipeline::model_with_directions(tmp.path());
    let port = free_port();
    let cfg = config(tmp.path(), &n, &model, port, &stack()["SECURE_KAFKA_BADHOST_BROKERS"], &sasl_ssl_properties());
    let d = spawn_daemon(&cfg, &stack()["SECURE_KAFKA_PASSWORD"], &tmp.path().join("daemon.log"));
    let log = assert_fails_fast(d, port, "certificate for wrong-host.invalid", None);
    let line = error_line(&log);
    eprintln!("bad host: {line}");
    assert!(line.contains("kafka: TLS certificate verification failed"), "{log}");
    assert!(line.contains(&stack()["SECURE_KAFKA_BADHOST_BROKERS"]), "the broker is not named: {line}");
    assert!(!log.contains("authentication failed"), "it got as far as SASL:\n{log}");
}

#[test]
fn plaintext_against_the_sasl_ssl_port_is_never_ready_and_processes_nothing() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let n = names("plain");
    let model = common::pipeline::model_with_directions(tmp.path());
    let rt = runtime();
    rt.block_on(create_topics(&n));
    rt.block_on(produce(&n.jobs, &[job("s-1", "sample", json!({"n": 1}))]));
    let port = free_port();
    // No [kafka.properties] security settings at all: librdkafka's default, PLAINTEXT.
    let cfg = config(tmp.path(), &n, &model, port, &stack()["SECURE_KAFKA_BROKERS"], &[]);
    let d = spawn_daemon(&cfg, "unused", &tmp.path().join("daemon.log"));
    let log = assert_fails_fast(d, port, "plaintext client, SASL_SSL port", None);
    let line = error_line(&log);
    eprintln!("plaintext: {line}");
    assert!(line.contains("kafka: no broker reachable") && line.contains("security.protocol=plaintext"), "{log}");
    assert!(consume(&n.results, 1, Duration::from_secs(5)).is_empty(), "a job was processed");
    assert!(consume(&n.dlq, 1, Duration::from_secs(2)).is_empty(), "a job was dead-lettered");
}

/// The other direction: a daemon configured for SASL_SSL whose broker address leads to a listener that answers
/// in plaintext (here a TCP listener of the test that records what it is sent). Every connection must open with
/// a TLS handshake record (0x16 0x03 …), never a Kafka request in clear (a 4-byte length, then ApiVersions' key
/// 0x00 0x12), and the daemon must fail fast, never ready.
#[test]
fn sasl_ssl_never_sends_plaintext_and_fails_fast_against_a_plaintext_listener() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let n = names("tlsonly");
    let model = common::pipeline::model_with_directions(tmp.path());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let fake = listener.local_addr().unwrap().to_string();
    let firsts: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    {
        let firsts = firsts.clone();
        std::thread::spawn(move || {
            use std::io::Read;
            for s in listener.incoming() {
                let Ok(mut s) = s else { return };
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 16];
                let mut got = Vec::new();
                while got.len() < 6 {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => got.extend_from_slice(&buf[..k]),
                    }
                }
                firsts.lock().unwrap().push(got);
                // Closing without a word, as a plaintext broker does with bytes it cannot parse.
            }
        });
    }
    let port = free_port();
    let cfg = config(tmp.path(), &n, &model, port, &fake, &sasl_ssl_properties());
    let d = spawn_daemon(&cfg, &stack()["SECURE_KAFKA_PASSWORD"], &tmp.path().join("daemon.log"));
    let log = assert_fails_fast(d, port, "SASL_SSL client, plaintext listener", None);
    eprintln!("tls-only: {}", error_line(&log));
    assert!(error_line(&log).contains("kafka: no broker reachable"), "{log}");
    let firsts = firsts.lock().unwrap();
    assert!(!firsts.is_empty(), "the daemon never connected:\n{log}");
    for f in firsts.iter().filter(|f| !f.is_empty()) {
        assert!(f[0] == 0x16 && f.get(1) == Some(&0x03), "a connection did not start with a TLS handshake: {f:02x?}");
        assert!(!(f.len() >= 6 && f[4] == 0x00 && f[5] == 0x12), "a Kafka ApiVersions request in clear: {f:02x?}");
    }
    eprintln!("tls-only: {} connection(s), each opened with a TLS ClientHello", firsts.len());
}

/// A password rotated under a running daemon: the broker re-authenticates sessions every 10 s
/// (`connections.max.reauth.ms` of the secure dev broker), the daemon's next authentication fails, and it stops:
/// readiness fails, it exits non-zero with the authentication error, the passwords never in its log.
#[test]
fn a_password_rotated_under_a_running_daemon_stops_it_with_an_authentication_error() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let n = names("rotate");
    let model = common::pipeline::model_with_directions(tmp.path());
    let rt = runtime();
    rt.block_on(create_topics(&n));
    let user = format!("rot-{}", std::process::id());
    let (old, new) = (format!("old-pw-canary-{}", std::process::id()), format!("new-pw-canary-{}", std::process::id()));
    set_scram_password(&user, &old);
    let port = free_port();
    let cfg = config(tmp.path(), &n, &model, port, &stack()["SECURE_KAFKA_BROKERS"], &sasl_ssl_properties_for(&user));
    let mut d = spawn_daemon(&cfg, &old, &tmp.path().join("daemon.log"));
    d.wait_ready(port);
    rt.block_on(produce(&n.jobs, &[job("s-1", "sample", json!({"n": 1}))]));
    assert_eq!(consume(&n.results, 1, Duration::from_secs(60)).len(), 1, "{}", d.log_text());
    set_scram_password(&user, &new);
    let rotated = Instant::now();
    let mut seen = Vec::new();
    let exit = loop {
        if let Some(s) = d.child.try_wait().unwrap() {
            break s;
        }
        assert!(rotated.elapsed() < Duration::from_secs(60), "still running 60 s after the rotation:\n{}", d.log_text());
        if let Some((status, _)) = http_get(port, "/readyz") {
            seen.push(status);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let took = rotated.elapsed();
    let log = d.log_text();
    eprintln!(
        "rotation: exited {exit} {:.1} s after the password changed; /readyz seen: {:?}; {}",
        took.as_secs_f64(),
        dedup(&seen),
        error_line(&log)
    );
    assert!(!exit.success(), "exit {exit}:\n{log}");
    // Re-authentication within 10 s of the change, then FAIL_FAST at most.
    assert!(took < Duration::from_secs(10) + FAIL_FAST, "took {took:?} to stop:\n{log}");
    assert_eq!(seen.last(), Some(&503), "readiness did not fail before the exit: {:?}", dedup(&seen));
    assert!(error_line(&log).contains("kafka: authentication failed"), "{log}");
    assert!(!log.contains(&old) && !log.contains(&new), "a password appears in the log:\n{log}");
}
