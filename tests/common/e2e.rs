//! What the tests against the dev stack share (`tests/daemon_e2e.rs`, `tests/kafka_security.rs`): unique names per
//! test, a small runtime, a free port, a plain HTTP GET, an S3 client of the dev stack's MinIO.
#![allow(dead_code)]
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

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
