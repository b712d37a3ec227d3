//! What the tests against the dev stack share (`tests/e2e_*.rs`, `tests/kafka_security.rs`): the dev stack's
//! variables, unique names per test, a small runtime, a free port, a plain HTTP GET, an S3 client of the dev stack's
//! MinIO, the pipeline file, a job message, a Kafka reader, and a `glowd serve` child process.
use super::bin::glowd;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::ClientConfig;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Runs `scripts/dev-stack <up>` then `scripts/dev-stack <env>` for each pair (all idempotent) and gathers the
/// `KEY=value` words the `env` commands print.
pub fn dev_stack(steps: &[(&str, &str)]) -> HashMap<String, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/dev-stack");
    let mut all = HashMap::new();
    for (up, env) in steps {
        let out = Command::new(&script).arg(up).output().expect("scripts/dev-stack runs");
        assert!(out.status.success(), "dev-stack {up} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        let out = Command::new(&script).arg(env).output().expect("dev-stack env");
        assert!(out.status.success(), "dev-stack {env}:\n{}", String::from_utf8_lossy(&out.stderr));
        all.extend(
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|w| w.split_once('='))
                .map(|(k, v)| (k.to_string(), v.trim_matches(|c| c == '"' || c == '\'').to_string())),
        );
    }
    all
}

/// One test at a time in a binary: they share the machine's two cores and the dev stack.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// A test's own topics, group and key prefixes.
pub struct Names {
    pub jobs: String,
    pub results: String,
    pub dlq: String,
    pub group: String,
    pub inputs: String,
    pub outputs: String,
}

impl Names {
    /// `<kind>.<test>-<pid>-<ms>.jobs` and so on: unique per run, so tests never see each other's records.
    pub fn new(kind: &str, test: &str) -> Names {
        let tag = format!(
            "{test}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
        );
        Names {
            jobs: format!("{kind}.{tag}.jobs"),
            results: format!("{kind}.{tag}.results"),
            dlq: format!("{kind}.{tag}.dlq"),
            group: format!("{kind}-{tag}"),
            inputs: format!("{kind}-in/{tag}"),
            outputs: format!("{kind}-out/{tag}"),
        }
    }

    /// A second consumer of the same jobs topic and inputs, with its own results topic, group and outputs
    /// (`…-<tag>`, `…/<tag>`); the DLQ topic is shared.
    pub fn variant(&self, tag: &str) -> Names {
        Names {
            jobs: self.jobs.clone(),
            results: format!("{}-{tag}", self.results),
            dlq: self.dlq.clone(),
            group: format!("{}-{tag}", self.group),
            inputs: self.inputs.clone(),
            outputs: format!("{}/{tag}", self.outputs),
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A plain HTTP/1.1 GET: (status, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, out.split_once("\r\n\r\n").map(|x| x.1.to_string()).unwrap_or_default()))
}

/// An S3 client of the dev stack's MinIO, from `scripts/dev-stack env`'s variables.
pub fn s3_client(env: &HashMap<String, String>) -> aws_sdk_s3::Client {
    let creds = aws_sdk_s3::config::Credentials::new(
        &env["AWS_ACCESS_KEY_ID"],
        &env["AWS_SECRET_ACCESS_KEY"],
        None,
        None,
        "test",
    );
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new(env["AWS_REGION"].clone()))
        .endpoint_url(&env["S3_ENDPOINT"])
        .force_path_style(true)
        .credentials_provider(creds)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// Writes `<dir>/pipeline.toml`: `brokers` and `[kafka.properties]` as given, the dev stack's MinIO (from `stack`),
/// the test's own names, a tiny model, small bounds so the tests are quick.
pub fn pipeline_toml(
    dir: &Path,
    n: &Names,
    model: &Path,
    port: u16,
    stack: &HashMap<String, String>,
    brokers: &str,
    properties: &[(&str, &str)],
) -> PathBuf {
    let properties = if properties.is_empty() {
        String::new()
    } else {
        let lines: String = properties.iter().map(|(k, v)| format!("\"{k}\" = \"{v}\"\n")).collect();
        format!("\n[kafka.properties]\n{lines}")
    };
    let text = format!(
        r#"
[kafka]
brokers = "{brokers}"
group = "{group}"
jobs_topic = "{jobs}"
results_topic = "{results}"
dlq_topic = "{dlq}"
pause_grace_ms = 200
{properties}
[s3]
endpoint = "{endpoint}"
region = "{region}"
allowed_inputs = [{{ bucket = "{bucket}", prefix = "{inputs}" }}]

[http]
listen = "127.0.0.1:{port}"

[[models]]
name = "faces"
version = "1"
path = "{model}"

[batching]
max_batch = 4
threads = 1

[limits]
max_in_flight_jobs = 16
drain_timeout_seconds = 20

[retry]
max_elapsed_seconds = 30

[output]
bucket = "{bucket}"
prefix = "{outputs}"
"#,
        group = n.group,
        jobs = n.jobs,
        results = n.results,
        dlq = n.dlq,
        endpoint = stack["S3_ENDPOINT"],
        region = stack["AWS_REGION"],
        bucket = stack["S3_BUCKET"],
        inputs = n.inputs,
        outputs = n.outputs,
        model = model.display(),
    );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A job message for the model "faces" version 1: `extra`'s fields on top of version, id and kind.
pub fn job(id: &str, kind: &str, extra: Value) -> String {
    let mut v = json!({"version": 1, "id": id, "kind": kind, "model": {"name": "faces", "version": "1"}});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v.to_string()
}

/// A record read back: payload and headers.
pub struct Record {
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

/// A consumer of `topic` (subscribed) in group `group`, with `client`'s connection settings: from the topic's start
/// when the group has no offsets, committing nothing.
pub fn reader(client: &ClientConfig, group: &str, topic: &str) -> BaseConsumer {
    let c: BaseConsumer = client
        .clone()
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    c
}

/// Reads `topic` from the start (with `client`'s connection settings) until `want` records arrived (or `timeout`
/// passed), then for `settle` longer.
pub fn consume(client: &ClientConfig, topic: &str, want: usize, timeout: Duration, settle: Duration) -> Vec<Record> {
    let c = reader(client, &format!("reader-{}-{}", topic, std::process::id()), topic);
    let mut out = Vec::new();
    let t0 = Instant::now();
    let mut reached: Option<Instant> = None;
    loop {
        if out.len() >= want && reached.is_none() {
            reached = Some(Instant::now());
        }
        if reached.is_some_and(|r| r.elapsed() >= settle) || t0.elapsed() > timeout {
            return out;
        }
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|x| (x.key.to_string(), String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned()))
                        .collect()
                })
                .unwrap_or_default();
            out.push(Record { payload: m.payload().unwrap_or_default().to_vec(), headers });
        }
    }
}

/// A `glowd serve` child process; killed (SIGKILL) when dropped, so a failing test leaves no daemon behind.
pub struct Daemon {
    pub child: Child,
    log: PathBuf,
    pub started: Instant,
}

impl Daemon {
    /// `glowd serve --config <config>` with the dev stack's S3 credentials (from `stack`) and `envs` on top, its
    /// stderr appended to `log`. Does not wait for readiness.
    pub fn spawn(config: &Path, stack: &HashMap<String, String>, envs: &[(String, String)], log: &Path) -> Daemon {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let child = glowd()
            .args(["serve", "--config", config.to_str().unwrap()])
            .env("GLOWD_LOG", "info")
            .env("AWS_ACCESS_KEY_ID", &stack["AWS_ACCESS_KEY_ID"])
            .env("AWS_SECRET_ACCESS_KEY", &stack["AWS_SECRET_ACCESS_KEY"])
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Daemon { child, log: log.to_path_buf(), started: Instant::now() }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Until `/readyz` answers 200; fails the test 180 s after the start.
    pub fn wait_ready(&self, port: u16) {
        while http_get(port, "/readyz").map(|(s, _)| s) != Some(200) {
            assert!(self.started.elapsed() < Duration::from_secs(180), "not ready in 180 s:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Polls `/readyz` until the process exits (or `limit` after the start passes): the exit status, when it
    /// exited, and every `/readyz` status seen.
    pub fn watch_until_exit(&mut self, port: u16, limit: Duration) -> (Option<std::process::ExitStatus>, Duration, Vec<u16>) {
        let mut seen = Vec::new();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return (Some(s), self.started.elapsed(), seen);
            }
            if self.started.elapsed() > limit {
                return (None, self.started.elapsed(), seen);
            }
            if let Some((status, _)) = http_get(port, "/readyz") {
                seen.push(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, then the exit status (fails the test if it takes over 60 s).
    pub fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "no exit 60 s after SIGTERM:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
