//! The job contract: what a message on the jobs topic may say, and what the daemon writes back.
//!
//! A job is a small versioned JSON document (a claim check: S3 URIs and a few numbers, never image bytes). It is
//! checked in this order, each step with its own [`JobError::kind`] so the DLQ header says which gate refused it:
//! size (`too_large`) → JSON (`not_json`) → version (`unknown_version`) → kind (`unknown_kind`) → the embedded
//! JSON Schema `schemas/job.v1.json` (`schema`) → the Rust types (`deny_unknown_fields`; `schema`) → rules a schema
//! cannot state (`invalid`: duplicate attributes, min > max) → this pipeline's configured limits (`over_limit`) →
//! input object keys (`forbidden_key`). Every failure is a poison pill: [`Disposition::DeadLetter`].
//!
//! The schema is the published contract and holds the hard ceilings (max edits, variants, frames, samples);
//! [`JobLimits`] lets a pipeline lower them, never raise them, so a job valid for one daemon is never silently
//! accepted beyond what the schema promises.
//!
//! Callers never choose output keys: [`output_prefix`] derives them from the job id, so a redelivered job
//! rewrites the same keys (with create-only writes, a second write is a no-op).
//!
//! Submodules: [`key`] (S3 URIs and key confinement), [`report`] (result records and manifests) and [`work`] (the
//! fingerprint of a job's work, which tells a redelivery from another job under the same id).

pub use crate::disposition::Disposition;

mod catalogue;
mod error;
pub mod key;
mod output_key;
mod parse;
pub mod report;
mod schema;
mod spec;
#[cfg(test)]
mod tests;
pub mod work;

pub use catalogue::{ErrorKind, Stage};
pub use error::*;
pub use output_key::*;
pub use parse::*;
pub use schema::*;
pub use spec::*;
pub use work::{work_fingerprint, StoredRecord, Work, CLAIM_NAME};

pub use key::{check_key, check_key_allowed, parse_s3_uri, AllowedPrefix, KeyError, S3Uri, MAX_KEY_BYTES};
pub use report::{Claim, JobFailure, JobResult, JobStatus, Manifest, MediaType, ModelProvenance, OutputEntry, SourcePosition, Timings};

/// The job message schema, embedded so the daemon validates against exactly the file in the repository.
pub const JOB_SCHEMA: &str = include_str!("../../schemas/job.v1.json");
/// The results-topic record schema.
pub const RESULT_SCHEMA: &str = include_str!("../../schemas/result.v1.json");
/// The per-job manifest schema.
pub const MANIFEST_SCHEMA: &str = include_str!("../../schemas/manifest.v1.json");
/// `$id` of the job schema: the result and manifest schemas `$ref` it.
pub const JOB_SCHEMA_ID: &str = "urn:glowd:schema:job.v1";

/// The only job format version this daemon reads.
pub const JOB_VERSION: u64 = 1;
/// The job kinds of version 1, in schema order.
pub const JOB_KINDS: [&str; 5] = ["edit", "encode", "augment", "interpolate", "sample"];

/// Default for [`JobLimits::max_payload_bytes`]: jobs are claim checks of a few hundred bytes; 64 KiB leaves room
/// for long key lists without letting a message carry image data (docs/reliability.md, contract item 7).
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// Schema ceiling: `{attribute, strength}` pairs per edit job (`$defs/edit/properties/edits/maxItems`).
pub const SCHEMA_MAX_EDITS: usize = 32;
/// Schema ceiling: attribute ranges per augment job.
pub const SCHEMA_MAX_ATTRIBUTES: usize = 32;
/// Schema ceiling: variants per augment job.
pub const SCHEMA_MAX_VARIANTS: u32 = 64;
/// Schema ceiling: frames per interpolate job (both end points included).
pub const SCHEMA_MAX_FRAMES: u32 = 128;
/// Schema ceiling: images per sample job.
pub const SCHEMA_MAX_SAMPLES: u32 = 256;
/// Schema ceiling on |strength| (edits and augment ranges).
pub const SCHEMA_MAX_STRENGTH: f64 = 10.0;
/// Default |strength| bound, the same as `glowd edit --max-strength`: beyond it edits leave the data manifold.
pub const DEFAULT_MAX_STRENGTH: f64 = 4.0;
/// Temperature used when a job gives none (the Glow paper's and `glowd sample`'s default).
pub const DEFAULT_TEMPERATURE: f64 = 0.7;
/// Name of the manifest written last beside each job's outputs.
pub const MANIFEST_NAME: &str = "manifest.json";
/// Largest seed a job may carry or derive: 2^53 − 1, so every JSON reader (JavaScript, jq) keeps it exact.
pub const MAX_SEED: u64 = (1 << 53) - 1;
/// Longest excerpt of caller text quoted in an error message (DLQ headers should stay short and printable).
const MAX_QUOTED_CHARS: usize = 64;
/// Schema violations listed in one error message; the rest are counted.
const MAX_SCHEMA_ERRORS_LISTED: usize = 4;
