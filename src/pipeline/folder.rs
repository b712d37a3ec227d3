//! A job's output folder as the job finds it: a manifest of the same work means the job finished earlier (it is
//! reported done from that manifest, before its inputs are fetched or it is checked against today's models and
//! limits); a manifest or claim of other work means its id is taken (`id_conflict`). The claim (`work.json`) is
//! written create-only just before the outputs, so two jobs under one id never mix their outputs in one folder, and
//! every read-back of an object already there is bounded.
use super::*;
use crate::job::{Claim, StoredRecord, Work, CLAIM_NAME};

impl Pipeline {
    /// The precision this pipeline's device ops run at (`[batching] precision`), as the work fingerprint takes it:
    /// the same job at fp32 and at bf16 gives other bytes, so it is other work.
    pub(super) fn precision(&self) -> &'static str {
        self.settings.batching.precision.as_str()
    }

    /// The job's manifest, when this work finished earlier; `None` when there is none; `id_conflict` when the
    /// manifest is of other work.
    pub(super) async fn finished(&self, job: &Job, work: &Work) -> Result<Option<StoredRecord>, (StageError, u32)> {
        let key = format!("{}{}", job::output_prefix(&self.settings.output.prefix, job), job::MANIFEST_NAME);
        let bucket = self.settings.output.bucket.as_str();
        match self.retrying(|| self.read_record(bucket, &key, Stage::Parse)).await? {
            None => Ok(None),
            Some(found) if found.same_work(work) => Ok(Some(found)),
            Some(found) => Err((conflict(job, &key, &found, work, Stage::Parse), 1)),
        }
    }

    /// Writes the claim create-only. Returns the record that owns the folder: ours, or the claim of an earlier
    /// attempt at the same work (what it wrote, or was about to); `id_conflict` when the claim is of other work.
    pub(super) async fn claim(&self, bucket: &str, key: &str, claim: &Claim) -> Result<StoredRecord, StageError> {
        let mut bytes = serde_json::to_vec_pretty(claim)
            .map_err(|e| StageError::fatal(ErrorKind::Internal, Stage::Encode, e.to_string()))?;
        bytes.push(b'\n');
        let put = self.outputs.put_if_absent(bucket, key, bytes.clone(), "application/json").await;
        self.note_store_answer(&StoreScope::write(bucket), &put);
        match put {
            Ok(PutOutcome::Created) => serde_json::from_slice(&bytes)
                .map_err(|e| StageError::fatal(ErrorKind::Internal, Stage::Encode, format!("{key}: {e}"))),
            Ok(PutOutcome::AlreadyExists) => match self.read_record(bucket, key, Stage::Put).await? {
                Some(found) if found.same_work(&claim.work) => Ok(found),
                Some(found) => Err(conflict(&claim.job, key, &found, &claim.work, Stage::Put)),
                None => Err(StageError::retry(ErrorKind::PutError, Stage::Put, format!("{key}: exists, then vanished"))),
            },
            Err(StoreError::Denied(m)) => {
                Err(StageError::denied(Stage::Put, StoreScope::write(bucket), format!("{key}: access denied: {m}")))
            }
            Err(StoreError::Refused(m)) => Err(StageError::fatal(ErrorKind::AccessDenied, Stage::Put, format!("{key}: {m}"))),
            Err(e) => Err(StageError::retry(ErrorKind::PutError, Stage::Put, format!("{key}: {e}"))),
        }
    }

    /// After a create-only write of the manifest found one there: it must be of this work (a concurrent delivery of
    /// the same job wrote it first), else the folder is another job's.
    pub(super) async fn existing_manifest(&self, job: &Job, work: &Work, bucket: &str, key: &str) -> Result<(), StageError> {
        match self.read_record(bucket, key, Stage::Put).await? {
            Some(found) if found.same_work(work) => Ok(()),
            Some(found) => Err(conflict(job, key, &found, work, Stage::Put)),
            None => Err(StageError::retry(ErrorKind::PutError, Stage::Put, format!("{key}: exists, then vanished"))),
        }
    }

    /// Reads a manifest or claim in a job's folder, at most `output.max_readback_bytes`; `None` when absent. An
    /// object over that bound or one that is no record of glowd's means the folder holds something else.
    async fn read_record(&self, bucket: &str, key: &str, stage: Stage) -> Result<Option<StoredRecord>, StageError> {
        let limit = self.settings.output.max_readback_bytes;
        let got = self.outputs.get(bucket, key, limit).await;
        // A denied read counts like an outage of the daemon's read access, not as an answer (store_health).
        self.note_store_answer(&StoreScope::read(bucket), &got);
        let foreign = |what: String| StageError::dead(ErrorKind::IdConflict, stage, format!("{key}: {what}: the job's folder holds something that is not its work"));
        match got {
            Ok(bytes) => match serde_json::from_slice::<StoredRecord>(&bytes) {
                Ok(record) => Ok(Some(record)),
                Err(e) => Err(foreign(format!("not a record glowd reads ({e})"))),
            },
            Err(StoreError::NotFound) => Ok(None),
            Err(StoreError::TooLarge { size, limit }) => {
                Err(foreign(format!("{size} bytes, over output.max_readback_bytes ({limit})")))
            }
            Err(StoreError::Denied(m)) => {
                Err(StageError::denied(stage, StoreScope::read(bucket), format!("{key}: reading it: access denied: {m}")))
            }
            Err(e) => Err(StageError::retry(ErrorKind::PutError, Stage::Put, format!("{key}: reading it: {e}"))),
        }
    }
}

/// The most bytes read back of an existing output at `key` whose recomputed bytes are `ours` long: the size the
/// folder's claim records for it (capped by `output.max_readback_bytes`), and never less than our own size.
pub(super) fn readback_bound(owner: &StoredRecord, key: &str, ours: usize, ceiling: u64) -> u64 {
    owner.size_of(key).unwrap_or(0).min(ceiling).max(ours as u64)
}

/// The `id_conflict` of a job whose folder holds another work's record: both fingerprints named.
fn conflict(job: &Job, key: &str, found: &StoredRecord, work: &Work, stage: Stage) -> StageError {
    let theirs = found.fingerprint().unwrap_or_else(|| "none recorded".into());
    StageError::dead(
        ErrorKind::IdConflict,
        stage,
        format!(
            "job id {} already holds other work: {key} records fingerprint {theirs}, this job's is {} ({} at {}): \
             give this job another id",
            job.id,
            work.fingerprint,
            job.kind(),
            work.precision
        ),
    )
}

/// The claim's name beside the manifest.
pub(super) fn claim_key(prefix: &str) -> String {
    format!("{prefix}{CLAIM_NAME}")
}
