//! An HTTP/1.1 fault proxy in front of the dev stack's S3 server (G10, G12, G13 in docs/reliability.md): it forwards each
//! request and, by a seeded draw per request, instead answers `503 SlowDown`, answers `409` to a conditional PUT,
//! resets the connection, holds the request for a latency spike, or flips one byte of an upload's body on the way.
//! It can also play a store that ignores `If-None-Match` (it answers every create-only PUT `200 OK` itself), and,
//! while switched on, a store that denies the daemon's credentials (`403 AccessDenied` to every GET, or every PUT).
//!
//! It frames requests by `Content-Length` (what the AWS SDK sends, aws-chunked bodies included) and copies the
//! server's responses back untouched; the SDK never pipelines, so an injected answer cannot overtake a real one.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Per-request probabilities (0..1) of each fault; they are drawn in this order and at most one applies.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    pub reset: f64,
    pub slowdown: f64,
    /// Only for PUTs that carry `If-None-Match`.
    pub conflict: f64,
    pub delay: f64,
    pub delay_for: Duration,
    /// Only for PUTs with a body: one byte of the body is inverted before it goes upstream.
    pub flip_upload: f64,
    /// Answer every create-only PUT `200 OK` without forwarding it (a store that ignores conditional writes).
    pub ignore_if_none_match: bool,
}

/// Faults switched on and off while the proxy runs.
#[derive(Debug, Default)]
pub struct Switches {
    /// Answer every GET `403 AccessDenied` (a rotated key, a bucket policy, a disabled KMS key).
    pub deny_get: AtomicBool,
    /// Answer every PUT `403 AccessDenied`.
    pub deny_put: AtomicBool,
}

#[derive(Debug, Default)]
pub struct Counts {
    pub requests: AtomicU64,
    pub resets: AtomicU64,
    pub slowdowns: AtomicU64,
    pub conflicts: AtomicU64,
    pub delays: AtomicU64,
    pub flips: AtomicU64,
    pub faked_puts: AtomicU64,
    pub denied: AtomicU64,
}

impl Counts {
    pub fn summary(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "{} requests: {} resets, {} SlowDown, {} 409, {} delayed, {} flipped uploads, {} faked PUTs, {} denied",
            g(&self.requests),
            g(&self.resets),
            g(&self.slowdowns),
            g(&self.conflicts),
            g(&self.delays),
            g(&self.flips),
            g(&self.faked_puts),
            g(&self.denied)
        )
    }
}

pub struct FaultProxy {
    pub port: u16,
    pub counts: Arc<Counts>,
    pub switches: Arc<Switches>,
}

impl FaultProxy {
    /// Listens on a free local port and forwards to `upstream` (`host:port`) on a thread of its own.
    pub fn start(upstream: &str, faults: Faults, seed: u64) -> FaultProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let counts = Arc::new(Counts::default());
        let switches = Arc::new(Switches::default());
        let faults = Arc::new(faults);
        let (c, f, up, sw) = (counts.clone(), faults, upstream.to_string(), switches.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = TcpListener::from_std(listener).unwrap();
                let rng = Arc::new(Mutex::new(seed | 1));
                loop {
                    let Ok((client, _)) = listener.accept().await else { continue };
                    let (c, f, up, rng, sw) = (c.clone(), f.clone(), up.clone(), rng.clone(), sw.clone());
                    tokio::spawn(async move {
                        let _ = connection(client, &up, c, f, sw, rng).await;
                    });
                }
            });
        });
        FaultProxy { port, counts, switches }
    }
}

/// xorshift64: a uniform draw in [0, 1).
fn draw(rng: &Mutex<u64>) -> f64 {
    let mut s = rng.lock().unwrap();
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    (*s >> 11) as f64 / (1u64 << 53) as f64
}

async fn connection(
    client: TcpStream,
    upstream: &str,
    counts: Arc<Counts>,
    faults: Arc<Faults>,
    switches: Arc<Switches>,
    rng: Arc<Mutex<u64>>,
) -> std::io::Result<()> {
    let server = TcpStream::connect(upstream).await?;
    let (client_r, client_w) = client.into_split();
    let (mut server_r, mut server_w) = server.into_split();
    let client_w = Arc::new(tokio::sync::Mutex::new(client_w));
    let back = {
        let client_w = client_w.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match server_r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if client_w.lock().await.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            let _ = client_w.lock().await.shutdown().await;
        })
    };
    let mut reader = BufReader::new(client_r);
    let result = async {
        loop {
            let mut head = Vec::new();
            loop {
                let mut line = Vec::new();
                if reader.read_until(b'\n', &mut line).await? == 0 {
                    return Ok(());
                }
                let end = line == b"\r\n";
                head.extend_from_slice(&line);
                if end {
                    break;
                }
            }
            let text = String::from_utf8_lossy(&head).to_string();
            let header = |name: &str| {
                text.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                })
            };
            let length: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
            let mut body = vec![0u8; length];
            reader.read_exact(&mut body).await?;
            counts.requests.fetch_add(1, Ordering::Relaxed);
            let is_put = text.starts_with("PUT ");
            let conditional = is_put && header("if-none-match").is_some();
            let f = &faults;
            let answer = |status: &str, code: &str| {
                let xml = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected by the fault proxy</Message></Error>");
                format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{xml}",
                    xml.len()
                )
            };
            let denied = if is_put { &switches.deny_put } else { &switches.deny_get };
            if (is_put || text.starts_with("GET ")) && denied.load(Ordering::SeqCst) {
                counts.denied.fetch_add(1, Ordering::Relaxed);
                client_w.lock().await.write_all(answer("403 Forbidden", "AccessDenied").as_bytes()).await?;
                return Ok(());
            }
            if conditional && f.ignore_if_none_match {
                counts.faked_puts.fetch_add(1, Ordering::Relaxed);
                let ok = "HTTP/1.1 200 OK\r\nETag: \"00000000000000000000000000000000\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
                client_w.lock().await.write_all(ok.as_bytes()).await?;
                return Ok(());
            }
            if draw(&rng) < f.reset {
                counts.resets.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            if draw(&rng) < f.slowdown {
                counts.slowdowns.fetch_add(1, Ordering::Relaxed);
                client_w.lock().await.write_all(answer("503 Slow Down", "SlowDown").as_bytes()).await?;
                return Ok(());
            }
            if conditional && draw(&rng) < f.conflict {
                counts.conflicts.fetch_add(1, Ordering::Relaxed);
                client_w.lock().await.write_all(answer("409 Conflict", "ConditionalRequestConflict").as_bytes()).await?;
                return Ok(());
            }
            if draw(&rng) < f.delay {
                counts.delays.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(f.delay_for).await;
            }
            if is_put && !body.is_empty() && draw(&rng) < f.flip_upload {
                counts.flips.fetch_add(1, Ordering::Relaxed);
                let last = body.len() - 1;
                let at = ((draw(&rng) * body.len() as f64) as usize).min(last);
                body[at] ^= 0xff;
            }
            server_w.write_all(&head).await?;
            server_w.write_all(&body).await?;
        }
    }
    .await;
    // Dropping both halves closes the connection (a reset for an injected one, the end for a finished one).
    back.abort();
    result
}
