//! The device watchdog's state. A device call has no deadline of its own (a CUDA kernel or a driver call that never
//! returns blocks its thread for good, and no Rust code can interrupt it), so the device thread stamps the start
//! of every forward pass here and the daemon's liveness probe reads the stamps: a pass running past the bound means
//! the device is hung, and only a restart of the process gets it back. Plain atomics, read from any thread.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The automatic bound (`batching.max_pass_seconds = 0`): this many times the slowest warm-up pass ...
pub const AUTO_BOUND_FACTOR: f64 = 20.0;
/// ... and never under this. The warm-up's first passes include allocation and kernel selection, so they are slower
/// than service passes; the floor also covers a CPU shared with other work.
pub const AUTO_BOUND_FLOOR: Duration = Duration::from_secs(60);

/// One device's progress, stamped by its thread, read by `/healthz` and the metrics.
#[derive(Debug)]
pub struct DeviceWatch {
    pub device: String,
    /// When this watch was made: stamps are milliseconds since then (monotonic, not wall time).
    origin: Instant,
    /// Milliseconds since `origin` when the pass in hand started, plus one (0: no pass running).
    pass_started: AtomicU64,
    /// A pass running longer than this is a hung device.
    bound_ms: AtomicU64,
    /// The slowest warm-up pass, in milliseconds (what the automatic bound was sized from).
    warm_up_ms: AtomicU64,
    /// Set once a stall has been counted, so a hung pass counts once in `glowd_device_stalls_total`.
    counted: AtomicBool,
}

/// A pass running past the bound.
#[derive(Debug, Clone, PartialEq)]
pub struct Stall {
    pub device: String,
    pub running: Duration,
    pub bound: Duration,
}

impl std::fmt::Display for Stall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "device {}: a forward pass has run for {:.1} s (bound {:.1} s, batching.max_pass_seconds); the device is hung",
            self.device,
            self.running.as_secs_f64(),
            self.bound.as_secs_f64()
        )
    }
}

impl DeviceWatch {
    pub fn new(device: &str, bound: Duration) -> Self {
        DeviceWatch {
            device: device.to_string(),
            origin: Instant::now(),
            pass_started: AtomicU64::new(0),
            bound_ms: AtomicU64::new(bound.as_millis() as u64),
            warm_up_ms: AtomicU64::new(0),
            counted: AtomicBool::new(false),
        }
    }

    /// The bound for `max_pass_seconds` (0: automatic) given the slowest warm-up pass.
    pub fn bound_for(max_pass_seconds: f64, slowest_warm_up_pass: Duration) -> Duration {
        if max_pass_seconds > 0.0 {
            Duration::from_secs_f64(max_pass_seconds)
        } else {
            AUTO_BOUND_FLOOR.max(slowest_warm_up_pass.mul_f64(AUTO_BOUND_FACTOR))
        }
    }

    pub fn set_bound(&self, bound: Duration, slowest_warm_up_pass: Duration) {
        self.bound_ms.store(bound.as_millis() as u64, Ordering::Relaxed);
        self.warm_up_ms.store(slowest_warm_up_pass.as_millis() as u64, Ordering::Relaxed);
    }

    pub fn bound(&self) -> Duration {
        Duration::from_millis(self.bound_ms.load(Ordering::Relaxed))
    }

    pub fn slowest_warm_up_pass(&self) -> Duration {
        Duration::from_millis(self.warm_up_ms.load(Ordering::Relaxed))
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// The device thread starts a forward pass (or other device work that must return).
    pub fn pass_started(&self) {
        self.pass_started.store(self.now_ms() + 1, Ordering::Relaxed);
    }

    /// The device thread has nothing running (between passes and batches).
    pub fn idle(&self) {
        self.pass_started.store(0, Ordering::Relaxed);
        self.counted.store(false, Ordering::Relaxed);
    }

    /// How long the pass in hand has run, if one is.
    pub fn running(&self) -> Option<Duration> {
        match self.pass_started.load(Ordering::Relaxed) {
            0 => None,
            started => Some(Duration::from_millis(self.now_ms().saturating_sub(started - 1))),
        }
    }

    /// The stall, if the pass in hand has run past the bound.
    pub fn stall(&self) -> Option<Stall> {
        let running = self.running()?;
        let bound = self.bound();
        (running > bound).then(|| Stall { device: self.device.clone(), running, bound })
    }

    /// The stall, and whether this is the first time it is seen (for a counter that counts each hung pass once).
    pub fn check(&self) -> Option<(Stall, bool)> {
        let stall = self.stall()?;
        let first = !self.counted.swap(true, Ordering::Relaxed);
        Some((stall, first))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_automatic_bound_is_twenty_warm_up_passes_and_never_under_a_minute() {
        assert_eq!(DeviceWatch::bound_for(0.0, Duration::from_millis(500)), Duration::from_secs(60));
        assert_eq!(DeviceWatch::bound_for(0.0, Duration::from_secs(6)), Duration::from_secs(120));
        assert_eq!(DeviceWatch::bound_for(2.5, Duration::from_secs(6)), Duration::from_millis(2500));
    }

    #[test]
    fn a_pass_is_a_stall_only_while_it_runs_past_the_bound() {
        let w = DeviceWatch::new("cpu", Duration::from_millis(50));
        assert_eq!(w.stall(), None, "idle");
        w.pass_started();
        assert_eq!(w.stall(), None, "just started");
        std::thread::sleep(Duration::from_millis(80));
        let (stall, first) = w.check().expect("past the bound");
        assert!(first);
        assert!(stall.running >= Duration::from_millis(80), "{stall:?}");
        assert!(stall.to_string().starts_with("device cpu: a forward pass has run for 0.1 s (bound 0.1 s"), "{stall}");
        assert!(!w.check().unwrap().1, "counted once");
        w.idle();
        assert_eq!(w.stall(), None, "it returned");
        // A long run of short passes is progress, not a stall.
        for _ in 0..6 {
            w.pass_started();
            std::thread::sleep(Duration::from_millis(20));
            assert_eq!(w.stall(), None);
        }
    }
}
