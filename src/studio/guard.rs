//! Who may talk to the studio. It binds 127.0.0.1 by default; any other address needs a bearer token. Without a
//! token the Host header must name the loopback (so a DNS-rebinding page cannot reach it through its own name),
//! and every state-changing request (POST) must come from the page itself (Origin, or Sec-Fetch-Site, same
//! origin). With a token, every API request must carry it; the page reads it from its URL's `#token=` fragment,
//! which browsers never send to a server.
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::Arc;

/// The access rules of one studio.
#[derive(Debug, Clone)]
pub struct Guard {
    /// SHA-256 of the token: compared in constant time, and the same length whatever the token's.
    token: Option<[u8; 32]>,
}

impl Guard {
    pub fn new(token: Option<&str>) -> Guard {
        Guard { token: token.map(|t| Sha256::digest(t.as_bytes()).into()) }
    }

    /// Whether `presented` is the token (constant time over the digests).
    pub fn token_matches(&self, presented: &str) -> bool {
        let Some(expected) = &self.token else { return false };
        let got: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        expected.iter().zip(got.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }

    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }
}

/// Refuses a non-loopback listen address without a token.
pub fn check_listen(addrs: &[SocketAddr], listen: &str, token: bool) -> Result<(), String> {
    if addrs.is_empty() {
        return Err(format!("--listen {listen}: resolves to no address"));
    }
    if !token && addrs.iter().any(|a| !a.ip().is_loopback()) {
        return Err(format!(
            "--listen {listen} is not a loopback address: anyone who can reach it could use the studio; give --token \
             (or GLOWD_STUDIO_TOKEN) to require a bearer token, or listen on 127.0.0.1"
        ));
    }
    Ok(())
}

/// Whether a Host header (`name[:port]`) names the loopback.
fn loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(n, port)| if port.chars().all(|c| c.is_ascii_digit()) { n } else { host })
    };
    let name = name.to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn refuse(status: StatusCode, why: &str) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], serde_json::json!({ "error": why }).to_string()).into_response()
}

/// The middleware: the page and its assets are public (they hold no secret); `/api/*` follows the rules above.
pub async fn check(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let host = text(header::HOST);
    let api = request.uri().path().starts_with("/api/");
    if guard.has_token() {
        if api {
            let auth = text(header::AUTHORIZATION);
            let presented = auth.strip_prefix("Bearer ").unwrap_or("");
            if !guard.token_matches(presented) {
                return refuse(StatusCode::UNAUTHORIZED, "this studio needs its token (open the page with #token=…)");
            }
        }
        return next.run(request).await;
    }
    if !loopback_host(&host) {
        return refuse(StatusCode::FORBIDDEN, "this studio answers to localhost names only (or start it with --token)");
    }
    let changes_state = !matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if changes_state {
        let origin = text(header::ORIGIN);
        let same_origin = if origin.is_empty() {
            text(header::HeaderName::from_static("sec-fetch-site")) == "same-origin"
        } else {
            origin.strip_prefix("http://").is_some_and(|o| o.eq_ignore_ascii_case(&host))
        };
        if !same_origin {
            return refuse(StatusCode::FORBIDDEN, "state-changing requests must come from the studio's own page (same origin)");
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_hosts() {
        let g = Guard::new(Some("s3cret"));
        assert!(g.token_matches("s3cret") && !g.token_matches("s3cre") && !g.token_matches(""));
        assert!(!Guard::new(None).token_matches(""));
        for ok in ["127.0.0.1:8787", "localhost:8787", "[::1]:8787", "localhost", "127.1.2.3"] {
            assert!(loopback_host(ok), "{ok}");
        }
        for bad in ["evil.example:8787", "10.0.0.1:8787", "", "localhost.evil.example", "[2001:db8::1]:80"] {
            assert!(!loopback_host(bad), "{bad}");
        }
        let lo: SocketAddr = "127.0.0.1:8787".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:8787".parse().unwrap();
        assert!(check_listen(&[lo], "127.0.0.1:8787", false).is_ok());
        assert!(check_listen(&[any], "0.0.0.0:8787", false).unwrap_err().contains("--token"));
        assert!(check_listen(&[any], "0.0.0.0:8787", true).is_ok());
    }
}
