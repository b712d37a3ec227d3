//! What the object store's answers say about the daemon's own access to it, as opposed to a job's objects: when it
//! last answered anything (an outage is no job's fault), and whether it denies the daemon's requests (401/403:
//! rotated or revoked credentials, a bucket policy, a disabled KMS key), per scope: reads or writes of one bucket.
//!
//! A denial counts like an outage: a job whose request is denied only uses up its retry budget while requests of
//! the same scope succeed (then its own object is what is refused, and it is dead-lettered `access_denied`); while
//! nothing in the scope succeeds the jobs wait, `/readyz` says why, the gauge `glowd_store_denied` is 1, and after
//! `retry.max_denied_seconds` (when set) the daemon stops non-zero.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StoreOp {
    Read,
    Write,
}

impl StoreOp {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreOp::Read => "read",
            StoreOp::Write => "write",
        }
    }
}

/// What a denial is about: one kind of request to one bucket.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoreScope {
    pub op: StoreOp,
    pub bucket: String,
}

impl StoreScope {
    pub fn read(bucket: &str) -> StoreScope {
        StoreScope { op: StoreOp::Read, bucket: bucket.to_string() }
    }

    pub fn write(bucket: &str) -> StoreScope {
        StoreScope { op: StoreOp::Write, bucket: bucket.to_string() }
    }
}

impl std::fmt::Display for StoreScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} access to bucket {}", self.op.as_str(), self.bucket)
    }
}

#[derive(Default)]
struct ScopeState {
    /// Milliseconds since the epoch, plus one, of the scope's last request the store served (0: never).
    ok_ms: u64,
    /// Since when every request of the scope has been denied (the first denial after the last success).
    denied_since_ms: Option<u64>,
    last_denial: String,
}

/// The object stores' answers to the daemon, shared by every job (and `/readyz`).
pub struct StoreHealth {
    epoch: Instant,
    /// The last answer that was neither a transient failure nor a denial, in ms since `epoch` plus one.
    answered_ms: AtomicU64,
    scopes: Mutex<HashMap<StoreScope, ScopeState>>,
}

impl Default for StoreHealth {
    fn default() -> Self {
        StoreHealth { epoch: Instant::now(), answered_ms: AtomicU64::new(0), scopes: Mutex::new(HashMap::new()) }
    }
}

impl StoreHealth {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    fn ms_of(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_millis() as u64 + 1
    }

    /// The store served a request of `scope` (any answer but a transient failure or a denial: an object, a 404,
    /// a 412 on a create-only write).
    pub fn served(&self, scope: &StoreScope) {
        let now = self.now_ms();
        self.answered_ms.fetch_max(now, Ordering::Relaxed);
        metrics::gauge!("glowd_store_unanswered").set(0.0);
        let mut scopes = self.scopes.lock().unwrap_or_else(|p| p.into_inner());
        let s = scopes.entry(scope.clone()).or_default();
        s.ok_ms = s.ok_ms.max(now);
        if s.denied_since_ms.take().is_some() {
            tracing::info!(scope = %scope, "the object store serves this scope again");
        }
        Self::gauge(&scopes);
    }

    /// The store denied a request of `scope` (401/403).
    pub fn denied(&self, scope: &StoreScope, message: &str) {
        let now = self.now_ms();
        let mut scopes = self.scopes.lock().unwrap_or_else(|p| p.into_inner());
        let s = scopes.entry(scope.clone()).or_default();
        if s.denied_since_ms.is_none() {
            s.denied_since_ms = Some(now);
            tracing::warn!(scope = %scope, error = %message, "the object store denies the daemon's requests: waiting");
        }
        s.last_denial = message.chars().take(200).collect();
        metrics::counter!("glowd_store_denials_total", "op" => scope.op.as_str()).increment(1);
        Self::gauge(&scopes);
    }

    fn gauge(scopes: &HashMap<StoreScope, ScopeState>) {
        let denied = scopes.values().any(|s| s.denied_since_ms.is_some());
        metrics::gauge!("glowd_store_denied").set(if denied { 1.0 } else { 0.0 });
    }

    /// The store answered something (neither a transient failure nor a denial) since `t`.
    pub fn answered_since(&self, t: Instant) -> bool {
        self.answered_ms.load(Ordering::Relaxed) >= self.ms_of(t)
    }

    /// The store served a request of `scope` since `t`.
    pub fn served_since(&self, scope: &StoreScope, t: Instant) -> bool {
        let scopes = self.scopes.lock().unwrap_or_else(|p| p.into_inner());
        scopes.get(scope).is_some_and(|s| s.ok_ms >= self.ms_of(t))
    }

    /// How long every request of `scope` has been denied, when it is.
    pub fn denied_for(&self, scope: &StoreScope) -> Option<Duration> {
        let scopes = self.scopes.lock().unwrap_or_else(|p| p.into_inner());
        let since = scopes.get(scope)?.denied_since_ms?;
        Some(Duration::from_millis(self.now_ms().saturating_sub(since)))
    }

    /// Why the daemon cannot do its work now, for `/readyz`: the scopes whose every request is denied.
    pub fn not_ready_reason(&self) -> Option<String> {
        let scopes = self.scopes.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.now_ms();
        let mut denied: Vec<String> = scopes
            .iter()
            .filter_map(|(scope, s)| {
                let since = s.denied_since_ms?;
                let secs = now.saturating_sub(since) as f64 / 1000.0;
                Some(format!("{scope} denied for {secs:.0} s ({})", s.last_denial))
            })
            .collect();
        if denied.is_empty() {
            return None;
        }
        denied.sort();
        Some(format!("object store: {}", denied.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_denial_lasts_until_the_scope_is_served_and_other_scopes_do_not_end_it() {
        let h = StoreHealth::default();
        let (read, write) = (StoreScope::read("b"), StoreScope::write("b"));
        let t0 = Instant::now();
        assert!(h.not_ready_reason().is_none());
        h.denied(&read, "HTTP 403 AccessDenied");
        assert!(h.denied_for(&read).is_some());
        assert!(!h.answered_since(t0), "a denial is not an answer");
        h.served(&write);
        assert!(h.answered_since(t0));
        assert!(!h.served_since(&read, t0), "writes served say nothing of reads");
        let reason = h.not_ready_reason().unwrap();
        assert!(reason.starts_with("object store: read access to bucket b denied for"), "{reason}");
        assert!(reason.contains("AccessDenied"), "{reason}");
        h.served(&read);
        assert!(h.served_since(&read, t0));
        assert_eq!(h.denied_for(&read), None);
        assert!(h.not_ready_reason().is_none());
    }
}
