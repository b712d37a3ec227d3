//! A job message as the pipeline receives it: its bytes, where it came from, how to acknowledge it, and the
//! W3C trace context it carried.
use crate::job::SourcePosition;
use std::time::Instant;

/// Called once when a job is finished (done or dead-lettered, and reported).
pub type Ack = Box<dyn FnOnce() + Send>;

/// One job message and where it came from.
pub struct Envelope {
    pub payload: Vec<u8>,
    /// Topic, partition and offset (the embedded mode uses the jobs file's name, partition 0, the line number).
    pub source: Option<SourcePosition>,
    pub ack: Option<Ack>,
    /// When the source handed it over (for `queued_seconds`).
    pub received: Instant,
    /// The job message's W3C `traceparent` header, carried to its log span and its dead letter.
    pub traceparent: Option<String>,
}

impl Envelope {
    pub fn new(payload: Vec<u8>, source: Option<SourcePosition>, ack: Option<Ack>) -> Self {
        Envelope { payload, source, ack, received: Instant::now(), traceparent: None }
    }

    /// Keeps `value` as the trace context when it has the W3C shape (`00-<32 hex>-<16 hex>-<2 hex>`); anything
    /// else is dropped rather than passed on.
    pub fn with_traceparent(mut self, value: Option<&[u8]>) -> Self {
        self.traceparent = value.and_then(|v| std::str::from_utf8(v).ok()).filter(|v| is_traceparent(v)).map(str::to_string);
        self
    }
}

pub(super) fn is_traceparent(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    parts.len() == 4 && hex(parts[0], 2) && hex(parts[1], 32) && hex(parts[2], 16) && hex(parts[3], 2)
}

#[cfg(test)]
mod traceparent_tests {
    use super::*;

    #[test]
    fn only_a_w3c_shaped_traceparent_is_carried() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let e = |v: &str| Envelope::new(vec![], None, None).with_traceparent(Some(v.as_bytes())).traceparent;
        assert_eq!(e(ok).as_deref(), Some(ok));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\nx: y",
        ] {
            assert_eq!(e(bad), None, "{bad:?}");
        }
        assert_eq!(Envelope::new(vec![], None, None).with_traceparent(Some(&[0xff, 0xfe])).traceparent, None);
    }
}
