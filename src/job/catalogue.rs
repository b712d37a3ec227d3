//! The one catalogue of error kinds and stages. Every kind a job can fail with is a variant here, with the one
//! line the README's table shows; the DLQ header `glowd.error.kind`, the result record's `error.kind` (an enum in
//! `schemas/result.v1.json`) and the metric labels all come from [`ErrorKind::as_str`]. `tests/catalogue.rs`
//! checks that the schema and the README list exactly these.
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

macro_rules! catalogue {
    ($($variant:ident = $name:literal : $meaning:literal,)*) => {
        /// Why a job failed: a short machine-readable reason.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum ErrorKind {
            $(#[doc = $meaning] $variant,)*
        }

        impl ErrorKind {
            /// Every kind, in catalogue order.
            pub const ALL: &'static [ErrorKind] = &[$(ErrorKind::$variant,)*];

            /// The name on the wire (DLQ header, result record, metric label).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(ErrorKind::$variant => $name,)*
                }
            }

            /// What the kind means, in one line (the README's table).
            pub const fn meaning(self) -> &'static str {
                match self {
                    $(ErrorKind::$variant => $meaning,)*
                }
            }

            /// The kind with this wire name.
            pub fn from_name(name: &str) -> Option<ErrorKind> {
                match name {
                    $($name => Some(ErrorKind::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

catalogue! {
    TooLarge = "too_large": "the job message is over the pipeline's `max_payload_bytes`",
    NotJson = "not_json": "the job message is not JSON",
    UnknownVersion = "unknown_version": "the job's `version` is not one this daemon reads",
    UnknownKind = "unknown_kind": "the job's `kind` is not edit, encode, augment, interpolate or sample",
    Schema = "schema": "the job does not match `schemas/job.v1.json`",
    Invalid = "invalid": "a rule the schema cannot state is broken (duplicate attributes, min over max, ...)",
    OverLimit = "over_limit": "a number in the job is over this pipeline's `[limits]`",
    ForbiddenKey = "forbidden_key": "an input key is malformed or outside the pipeline's `allowed_inputs`",
    UnknownModel = "unknown_model": "the job names a model (or version) this daemon does not serve",
    UnknownAttribute = "unknown_attribute": "the job names an attribute the model has no direction for",
    InvalidForModel = "invalid_for_model": "the job's numbers do not fit the model (levels, strengths, ...)",
    IdConflict = "id_conflict": "the job's id already holds the outputs of other work (another fingerprint)",
    MissingObject = "missing_object": "an input object does not exist",
    InputTooLarge = "input_too_large": "an input object is over `max_input_bytes`",
    AccessDenied = "access_denied": "the store refused this job's object while serving others of its bucket (or refused the request)",
    EmptyInput = "empty_input": "an input object is empty",
    UnsupportedFormat = "unsupported_format": "an input is not an image format this pipeline accepts",
    CorruptImage = "corrupt_image": "an input image cannot be decoded",
    OverPixelLimit = "over_pixel_limit": "an input image has more pixels than `max_pixels` (or the decoder's limits)",
    OverDecodeBudget = "over_decode_budget": "decoding the job's images needs more than the whole `max_in_flight_decoded_bytes`",
    WrongChannels = "wrong_channels": "an input image has channels the model cannot take",
    WrongSize = "wrong_size": "an input image is not the model's size and the pipeline does not resize",
    NonFiniteOutput = "non_finite_output": "the model decoded a non-finite picture for this job (too strong an edit)",
    RetriesExhausted = "retries_exhausted": "a transient failure outlasted the retry budget while the store answered",
    FetchError = "fetch_error": "reading an input failed transiently (retried)",
    PutError = "put_error": "writing an output failed (retried when transient)",
    DecodePanic = "decode_panic": "the image decoder panicked on this input (retried)",
    EncodePanic = "encode_panic": "encoding an output panicked (retried)",
    DeviceError = "device_error": "the device failed on this batch (retried)",
    DevicePanic = "device_panic": "the device thread panicked on this batch (retried)",
    DeviceStopped = "device_stopped": "the device worker has stopped: the daemon drains and exits",
    ModelLoad = "model_load": "a model could not be loaded: the daemon does not start",
    Internal = "internal": "a bug: glowd broke one of its own invariants",
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for ErrorKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<str> for ErrorKind {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl Serialize for ErrorKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        ErrorKind::from_name(&name).ok_or_else(|| serde::de::Error::custom(format!("unknown error kind `{name}`")))
    }
}

/// The pipeline stage where a job failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Parse,
    Fetch,
    Decode,
    Batch,
    Device,
    Encode,
    Put,
    Report,
}

impl Stage {
    /// Every stage, in pipeline order.
    pub const ALL: [Stage; 8] =
        [Stage::Parse, Stage::Fetch, Stage::Decode, Stage::Batch, Stage::Device, Stage::Encode, Stage::Put, Stage::Report];

    /// The name on the wire (DLQ header `glowd.error.stage`, result record, metric label).
    pub const fn as_str(self) -> &'static str {
        match self {
            Stage::Parse => "parse",
            Stage::Fetch => "fetch",
            Stage::Decode => "decode",
            Stage::Batch => "batch",
            Stage::Device => "device",
            Stage::Encode => "encode",
            Stage::Put => "put",
            Stage::Report => "report",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
