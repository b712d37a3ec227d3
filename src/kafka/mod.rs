//! Kafka: the jobs source (a consumer polled from its own OS thread) and the reporter (results and DLQ topics).
//!
//! Delivery (docs/reliability.md, contract items 1–5): `enable.auto.commit=true` with `enable.auto.offset.store=false`; the
//! consumer thread owns an [`OffsetTracker`], registers every message it hands to the pipeline, and stores a
//! partition's offset only when that job and every earlier one are finished (the pipeline's ack sends the token
//! back over a channel). librdkafka's auto-commit then commits what was stored; a clean stop and every revocation
//! commit synchronously. The thread never blocks on the pipeline: a message the pipeline cannot take yet waits in
//! a small buffer, and when the pipeline stays full longer than `pause_grace_ms` (or a partition reaches its
//! in-flight cap) the partitions are paused while polling goes on, and resumed once the buffer has drained.
//!
//! Files: [`client`] (settings, start-up check), [`source`] (consumer thread), [`reporter`] (results and DLQ),
//! [`ack`] (the per-partition offset watermark).
pub mod ack;
mod client;
mod reporter;
mod source;

pub use client::*;
pub use reporter::*;
pub use source::*;
