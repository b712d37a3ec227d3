//! The S3 store (aws-sdk-s3): whole-object reads with a size cap, create-only writes (`If-None-Match: *`, a 412
//! means the object exists: a redelivered job), CRC32C on every upload, and a start-up self-test that the server
//! honours conditional writes (docs/reliability.md, contract items 3 and 9; G12). Credentials come from the standard AWS
//! chain (environment, profile, instance role); nothing here logs them.
use crate::settings::S3Settings;
use crate::pipeline::store::{BoxFuture, ObjectStore, PutOutcome, StoreError};
use aws_sdk_s3::config::{BehaviorVersion, Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ChecksumAlgorithm;
use aws_sdk_s3::Client;
use std::time::Duration;

#[derive(Clone)]
pub struct S3Store {
    client: Client,
}

/// Attempts the SDK makes per request before the pipeline's own retry budget takes over: few and quick.
pub const SDK_MAX_ATTEMPTS: u32 = 3;
/// How long a TCP connect to the store may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the start-up self-test keeps retrying transient failures: one bad answer should not keep a daemon
/// from starting, a store that is down for good should.
pub const SELF_TEST_PATIENCE: Duration = Duration::from_secs(30);
/// Pause between self-test attempts.
const SELF_TEST_RETRY_WAIT: Duration = Duration::from_millis(500);

/// Why the start-up self-test refused the store.
#[derive(Debug, thiserror::Error)]
pub enum SelfTestError {
    #[error("s3://{bucket}/{key}: a second create-only write (If-None-Match: *) succeeded: this store ignores conditional writes, so outputs could be overwritten")]
    IgnoresConditionalWrites { bucket: String, key: String },
    #[error("s3://{bucket}/{key}: {error}")]
    Store { bucket: String, key: String, error: StoreError },
}

impl S3Store {
    pub async fn new(s: &S3Settings) -> S3Store {
        let shared = aws_config::defaults(BehaviorVersion::latest()).region(Region::new(s.region.clone())).load().await;
        let timeout = Duration::from_secs_f64(s.timeout_seconds.max(0.1));
        let mut b = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(s.force_path_style)
            // The 2025 SDK default (checksums on every request) breaks many S3-compatible servers; we ask for CRC32C
            // explicitly on uploads instead.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            // The SDK's own retries are few and quick; the pipeline retries with its own budget on top.
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::standard().with_max_attempts(SDK_MAX_ATTEMPTS))
            .timeout_config(
                aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                    .operation_attempt_timeout(timeout)
                    .connect_timeout(CONNECT_TIMEOUT)
                    .build(),
            );
        if let Some(endpoint) = &s.endpoint {
            b = b.endpoint_url(endpoint);
        }
        S3Store { client: Client::from_conf(b.build()) }
    }

    /// The SDK client, for the listing and plain overwrites of `glowd submit` and `glowd dataset`.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Writes `key` create-only twice: the second write must be refused (412). A store that overwrites instead
    /// would turn redelivered jobs into duplicate writes, so the daemon refuses to become ready on it. The probe
    /// key is fixed, so only one small object ever exists.
    pub async fn self_test(&self, bucket: &str, key: &str) -> Result<(), SelfTestError> {
        let body = b"glowd conditional-write probe\n".to_vec();
        let mut attempt = 0;
        // A transient failure (503 SlowDown, a reset connection) is retried for a while.
        let deadline = std::time::Instant::now() + SELF_TEST_PATIENCE;
        loop {
            let put = match self.put_if_absent(bucket, key, body.clone(), "text/plain").await {
                Err(StoreError::Transient(m)) if std::time::Instant::now() < deadline => {
                    tracing::warn!(error = %m, "S3 self-test: transient failure, retrying");
                    tokio::time::sleep(SELF_TEST_RETRY_WAIT).await;
                    continue;
                }
                other => other,
            };
            match put {
                Ok(PutOutcome::AlreadyExists) => return Ok(()),
                Ok(PutOutcome::Created) if attempt == 0 => attempt = 1,
                Ok(PutOutcome::Created) => {
                    return Err(SelfTestError::IgnoresConditionalWrites { bucket: bucket.into(), key: key.into() })
                }
                Err(error) => return Err(SelfTestError::Store { bucket: bucket.into(), key: key.into(), error }),
            }
        }
    }
}

/// Error codes of a 400 that say the request was damaged on its way (a body whose checksum or signed hash does
/// not match, a body that stopped arriving), not that it was wrong: sending it again is the remedy (G13).
const DAMAGED_IN_TRANSIT: [&str; 6] = [
    "BadDigest",
    "InvalidDigest",
    "XAmzContentSHA256Mismatch",
    "XAmzContentChecksumMismatch",
    "IncompleteBody",
    "RequestTimeout",
];

fn classify<E>(e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> (Option<u16>, String)
where
    E: std::fmt::Debug + aws_sdk_s3::error::ProvideErrorMetadata,
{
    let status = e.raw_response().map(|r| r.status().as_u16());
    if let SdkError::ServiceError(s) = e {
        if let Some(code) = s.err().code().filter(|c| DAMAGED_IN_TRANSIT.contains(c)) {
            return (status, format!("{DAMAGED}: {code}"));
        }
    }
    let message = match e {
        SdkError::ServiceError(s) => format!("{:?}", s.err()).chars().take(300).collect(),
        SdkError::TimeoutError(_) => "timed out".into(),
        SdkError::DispatchFailure(d) => {
            format!("dispatch failure ({:?})", d.as_connector_error().map(|c| c.to_string()))
        }
        other => format!("{other}"),
    };
    (status, message)
}

/// How [`classify`] starts the message of a request that was damaged on its way.
const DAMAGED: &str = "damaged in transit";

fn store_error(status: Option<u16>, message: String) -> StoreError {
    match status {
        Some(400) if message.starts_with(DAMAGED) => StoreError::Transient(format!("HTTP 400: {message}")),
        Some(404) => StoreError::NotFound,
        Some(401 | 403) => StoreError::Denied(message),
        Some(400) => StoreError::Refused(format!("bad request: {message}")),
        _ => StoreError::Transient(match status {
            Some(s) => format!("HTTP {s}: {message}"),
            None => message,
        }),
    }
}

impl ObjectStore for S3Store {
    fn get<'a>(&'a self, bucket: &'a str, key: &'a str, max_bytes: u64) -> BoxFuture<'a, Result<Vec<u8>, StoreError>> {
        Box::pin(async move {
            // Checksum mode: an object stored with a checksum (every output of glowd) is verified as it is read.
            let resp = match self
                .client
                .get_object()
                .bucket(bucket)
                .key(key)
                .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
                .send()
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    if let SdkError::ServiceError(s) = &e {
                        if s.err().is_no_such_key() {
                            return Err(StoreError::NotFound);
                        }
                    }
                    let (status, message) = classify(&e);
                    return Err(store_error(status, message));
                }
            };
            let size = resp.content_length().unwrap_or(0).max(0) as u64;
            if size > max_bytes {
                return Err(StoreError::TooLarge { size, limit: max_bytes });
            }
            let bytes =
                resp.body.collect().await.map_err(|e| StoreError::Transient(format!("reading the body: {e}")))?;
            let bytes = bytes.into_bytes();
            if bytes.len() as u64 > max_bytes {
                return Err(StoreError::TooLarge { size: bytes.len() as u64, limit: max_bytes });
            }
            Ok(bytes.to_vec())
        })
    }

    fn put_if_absent<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        body: Vec<u8>,
        content_type: &'a str,
    ) -> BoxFuture<'a, Result<PutOutcome, StoreError>> {
        Box::pin(async move {
            let sent = self
                .client
                .put_object()
                .bucket(bucket)
                .key(key)
                .body(ByteStream::from(body))
                .content_type(content_type)
                .checksum_algorithm(ChecksumAlgorithm::Crc32C)
                .if_none_match("*")
                .send()
                .await;
            match sent {
                Ok(_) => Ok(PutOutcome::Created),
                Err(e) => {
                    let (status, message) = classify(&e);
                    match status {
                        Some(412) => Ok(PutOutcome::AlreadyExists),
                        // 409: a concurrent conditional write of the same key is in progress: try again.
                        Some(409) => Err(StoreError::Transient(format!("HTTP 409: {message}"))),
                        _ => Err(store_error(status, message)),
                    }
                }
            }
        })
    }
}
