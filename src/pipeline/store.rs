//! Where inputs come from and outputs go: the [`ObjectStore`] trait, with a local-folder implementation for the
//! embedded mode (and tests). The S3 implementation is [`crate::s3::S3Store`].
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("no such object")]
    NotFound,
    #[error("object is {size} bytes, over the {limit}-byte limit")]
    TooLarge { size: u64, limit: u64 },
    /// 401/403: the store refuses the daemon's credentials or permissions (rotated or revoked keys, a bucket
    /// policy, a disabled KMS key). Treated as an outage of the daemon's own access, not as the job's fault.
    #[error("access denied: {0}")]
    Denied(String),
    /// The request itself is refused for what it asks (a 400, a malformed key, a local file this process may not
    /// read): the job's fault.
    #[error("refused: {0}")]
    Refused(String),
    /// 5xx, throttling, timeouts, connection errors: retried.
    #[error("{0}")]
    Transient(String),
}

/// What a create-only write found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    /// The key existed already (a redelivered job, or another daemon did it): nothing was written.
    AlreadyExists,
}

pub trait ObjectStore: Send + Sync + 'static {
    /// Reads a whole object, refusing one over `max_bytes` (from its length, before reading it).
    fn get<'a>(&'a self, bucket: &'a str, key: &'a str, max_bytes: u64) -> BoxFuture<'a, Result<Vec<u8>, StoreError>>;
    /// Writes an object only if no object has that key (`If-None-Match: *`).
    fn put_if_absent<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        body: Vec<u8>,
        content_type: &'a str,
    ) -> BoxFuture<'a, Result<PutOutcome, StoreError>>;
}

/// Objects as files: `<root>/<bucket>/<key>`, or `<root>/<key>` when the store ignores buckets (the embedded
/// mode's output folder). Keys reach here only after [`crate::job::check_key`], so they cannot leave the root.
/// Writes are atomic and create-only: a temporary sibling is written, flushed, then hard-linked to the final name
/// (which fails if it exists) and removed.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
    buckets: bool,
}

impl LocalStore {
    /// `s3://bucket/key` → `<root>/bucket/key`.
    pub fn with_buckets(root: impl Into<PathBuf>) -> Self {
        LocalStore { root: root.into(), buckets: true }
    }

    /// `s3://bucket/key` → `<root>/key`.
    pub fn flat(root: impl Into<PathBuf>) -> Self {
        LocalStore { root: root.into(), buckets: false }
    }

    pub fn path(&self, bucket: &str, key: &str) -> Result<PathBuf, StoreError> {
        crate::job::check_key(key).map_err(|e| StoreError::Refused(e.to_string()))?;
        let mut p = self.root.clone();
        if self.buckets {
            crate::job::key::check_bucket(bucket).map_err(|e| StoreError::Refused(e.to_string()))?;
            p.push(bucket);
        }
        p.push(Path::new(key));
        Ok(p)
    }
}

fn io_error(e: std::io::Error) -> StoreError {
    match e.kind() {
        std::io::ErrorKind::NotFound => StoreError::NotFound,
        // A local file this process may not read or write: that file's problem (the embedded mode's folders).
        std::io::ErrorKind::PermissionDenied => StoreError::Refused(e.to_string()),
        _ => StoreError::Transient(e.to_string()),
    }
}

impl ObjectStore for LocalStore {
    fn get<'a>(&'a self, bucket: &'a str, key: &'a str, max_bytes: u64) -> BoxFuture<'a, Result<Vec<u8>, StoreError>> {
        Box::pin(async move {
            let path = self.path(bucket, key)?;
            tokio::task::spawn_blocking(move || {
                let meta = std::fs::metadata(&path).map_err(io_error)?;
                if !meta.is_file() {
                    return Err(StoreError::NotFound);
                }
                if meta.len() > max_bytes {
                    return Err(StoreError::TooLarge { size: meta.len(), limit: max_bytes });
                }
                std::fs::read(&path).map_err(io_error)
            })
            .await
            .map_err(|e| StoreError::Transient(e.to_string()))?
        })
    }

    fn put_if_absent<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        body: Vec<u8>,
        _content_type: &'a str,
    ) -> BoxFuture<'a, Result<PutOutcome, StoreError>> {
        Box::pin(async move {
            let path = self.path(bucket, key)?;
            tokio::task::spawn_blocking(move || {
                if path.exists() {
                    return Ok(PutOutcome::AlreadyExists);
                }
                let dir = path.parent().expect("a key has a parent under the root");
                std::fs::create_dir_all(dir).map_err(io_error)?;
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let tmp = dir.join(format!(".{name}.tmp-{}-{}", std::process::id(), unique()));
                let write = || -> std::io::Result<()> {
                    let mut f = std::fs::File::create(&tmp)?;
                    f.write_all(&body)?;
                    f.sync_all()
                };
                if let Err(e) = write() {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(io_error(e));
                }
                let linked = std::fs::hard_link(&tmp, &path);
                let _ = std::fs::remove_file(&tmp);
                match linked {
                    Ok(()) => Ok(PutOutcome::Created),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(PutOutcome::AlreadyExists),
                    Err(e) => Err(io_error(e)),
                }
            })
            .await
            .map_err(|e| StoreError::Transient(e.to_string()))?
        })
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_writes_are_create_only_and_reads_are_capped() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::with_buckets(dir.path());
        assert_eq!(s.put_if_absent("bkt", "a/b.txt", b"one".to_vec(), "text/plain").await, Ok(PutOutcome::Created));
        assert_eq!(
            s.put_if_absent("bkt", "a/b.txt", b"two".to_vec(), "text/plain").await,
            Ok(PutOutcome::AlreadyExists)
        );
        assert_eq!(s.get("bkt", "a/b.txt", 10).await.unwrap(), b"one");
        assert_eq!(s.get("bkt", "a/b.txt", 2).await, Err(StoreError::TooLarge { size: 3, limit: 2 }));
        assert_eq!(s.get("bkt", "a/none", 10).await, Err(StoreError::NotFound));
        assert!(matches!(s.get("bkt", "../x", 10).await, Err(StoreError::Refused(_))));
        assert_eq!(std::fs::read_dir(dir.path().join("bkt/a")).unwrap().count(), 1, "no temporary file left");
    }
}
