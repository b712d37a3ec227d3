//! The stages' I/O with retries: fetching inputs, the device round trip, create-only writes, reporting. Each
//! returns a [`StageError`] whose disposition says whether [`Pipeline::retrying`] tries again.
use super::*;

impl Pipeline {
    /// Reporting is retried until it works or the job is abandoned: a job is not finished until it is reported,
    /// and giving up would mean dead-lettering through the very sink that fails.
    pub(super) async fn report<'a, F>(&'a self, mut f: impl FnMut() -> F, stage: Stage) -> Result<(), StageError>
    where
        F: std::future::Future<Output = Result<(), report::ReportError>> + 'a,
    {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match f().await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(attempt, error = %e, "reporting failed, retrying");
                    metrics::counter!("glowd_retries_total", "stage" => "report").increment(1);
                    let wait = self.settings.retry.backoff(attempt);
                    tokio::select! {
                        _ = self.abandon.cancelled() => return Err(StageError::abandoned(stage)),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }
    /// Runs `f` until it succeeds, fails for good, or fails transiently for longer than the retry budget (then
    /// `retries_exhausted`). Returns the error with the number of attempts.
    pub(super) async fn retrying<'a, T, F>(&'a self, mut f: impl FnMut() -> F) -> Result<T, (StageError, u32)>
    where
        F: std::future::Future<Output = Result<T, StageError>> + 'a,
    {
        let mut start = Instant::now();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let e = match f().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if e.disposition != Disposition::Retry || e.abandoned {
                return Err((e, attempt));
            }
            let store_stage = matches!(e.stage, Stage::Fetch | Stage::Put);
            if store_stage && start.elapsed() >= self.settings.retry.budget() && !self.store_answered_since(start) {
                // The store has answered nothing since the budget started: an outage, which is no job's fault.
                // The budget starts again and the job waits, like every other job, for the store to come back.
                metrics::gauge!("glowd_store_unanswered").set(1.0);
                tracing::warn!(attempt, error = %e.message, "the object store answers nothing: waiting for it");
                start = Instant::now();
            }
            if start.elapsed() >= self.settings.retry.budget() {
                let message = format!(
                    "gave up after {attempt} attempts over {:.1} s: {}",
                    start.elapsed().as_secs_f64(),
                    e.message
                );
                return Err((StageError::dead(ErrorKind::RetriesExhausted, e.stage, message), attempt));
            }
            let stage = e.stage.as_str();
            metrics::counter!("glowd_retries_total", "stage" => stage).increment(1);
            tracing::warn!(attempt, kind = e.kind.as_str(), error = %e.message, "transient failure, retrying");
            let wait = self.settings.retry.backoff(attempt);
            tokio::select! {
                _ = self.abandon.cancelled() => return Err((StageError::abandoned(e.stage), attempt)),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
    /// Records that an object store answered a request (any answer but a transient failure).
    pub(super) fn note_store_answer(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64 + 1;
        self.store_answered_ms.fetch_max(ms, Ordering::Relaxed);
        metrics::gauge!("glowd_store_unanswered").set(0.0);
    }

    /// Whether an object store has answered a request since `t`.
    fn store_answered_since(&self, t: Instant) -> bool {
        let answered = self.store_answered_ms.load(Ordering::Relaxed);
        let since = t.saturating_duration_since(self.epoch).as_millis() as u64 + 1;
        answered >= since
    }

    pub(super) fn stage_time(timing: &mut Option<f64>, since: Instant, stage: &'static str) {
        let s = since.elapsed().as_secs_f64();
        *timing = Some(timing.unwrap_or(0.0) + s);
        metrics::histogram!("glowd_stage_seconds", "stage" => stage).record(s);
    }
    pub(super) async fn fetch(&self, bucket: &str, key: &str) -> Result<Vec<u8>, StageError> {
        let _permit = tokio::select! {
            _ = self.abandon.cancelled() => return Err(StageError::abandoned(Stage::Fetch)),
            p = self.fetch_permits.acquire() => p.expect("never closed"),
        };
        let uri = format!("s3://{bucket}/{key}");
        let max = self.settings.images.max_input_bytes;
        let got = self.inputs.get(bucket, key, max).await;
        if !matches!(got, Err(StoreError::Transient(_))) {
            self.note_store_answer();
        }
        match got {
            Ok(bytes) => Ok(bytes),
            Err(StoreError::NotFound) => {
                Err(StageError::dead(ErrorKind::MissingObject, Stage::Fetch, format!("{uri}: no such object")))
            }
            Err(e @ StoreError::TooLarge { .. }) => {
                Err(StageError::dead(ErrorKind::InputTooLarge, Stage::Fetch, format!("{uri}: {e}")))
            }
            Err(StoreError::Denied(m)) => Err(StageError::dead(ErrorKind::AccessDenied, Stage::Fetch, format!("{uri}: {m}"))),
            Err(StoreError::Transient(m)) => Err(StageError::retry(ErrorKind::FetchError, Stage::Fetch, format!("{uri}: {m}"))),
        }
    }
    pub(super) async fn on_device(&self, model: usize, op: DeviceOp) -> Result<DeviceOutput, StageError> {
        let (reply, rx) = oneshot::channel();
        let queue = &self.models[model].1;
        tokio::select! {
            _ = self.abandon.cancelled() => return Err(StageError::abandoned(Stage::Batch)),
            sent = queue.tx.send(BatchItem { op, reply }) => {
                sent.map_err(|_| StageError::fatal(ErrorKind::DeviceStopped, Stage::Batch, "the model's batcher is gone"))?
            }
        }
        tokio::select! {
            _ = self.abandon.cancelled() => Err(StageError::abandoned(Stage::Device)),
            r = rx => match r {
                Ok(r) => r.map_err(StageError::from),
                Err(_) => Err(StageError::fatal(ErrorKind::DeviceStopped, Stage::Device, "the device worker dropped the job")),
            },
        }
    }
    /// A create-only write. When the key exists already (an earlier attempt at the same work: the folder's claim
    /// says so), the stored bytes are read back, at most `bound` bytes, so the manifest describes what is stored;
    /// they should equal ours (outputs are deterministic) and a difference is logged and counted. An object over
    /// the bound is not what this work writes there: the job is refused (`id_conflict`) rather than read it.
    pub(super) async fn put(
        &self,
        bucket: &str,
        key: &str,
        bytes: Vec<u8>,
        media: MediaType,
        bound: u64,
    ) -> Result<Vec<u8>, StageError> {
        let _permit = tokio::select! {
            _ = self.abandon.cancelled() => return Err(StageError::abandoned(Stage::Put)),
            p = self.put_permits.acquire() => p.expect("never closed"),
        };
        let content_type = content_type(media);
        let put = self.outputs.put_if_absent(bucket, key, bytes.clone(), content_type).await;
        if !matches!(put, Err(StoreError::Transient(_))) {
            self.note_store_answer();
        }
        match put {
            Ok(PutOutcome::Created) => Ok(bytes),
            Ok(PutOutcome::AlreadyExists) => {
                metrics::counter!("glowd_outputs_existing_total").increment(1);
                match self.outputs.get(bucket, key, bound).await {
                    Ok(stored) => {
                        if stored != bytes {
                            metrics::counter!("glowd_outputs_differing_total").increment(1);
                            tracing::warn!(
                                key,
                                "an existing output differs from the recomputed one; the manifest lists the stored one"
                            );
                        }
                        Ok(stored)
                    }
                    Err(StoreError::Transient(m)) => {
                        Err(StageError::retry(ErrorKind::PutError, Stage::Put, format!("{key}: {m}")))
                    }
                    Err(StoreError::TooLarge { size, limit }) => Err(StageError::dead(
                        ErrorKind::IdConflict,
                        Stage::Put,
                        format!(
                            "{key}: an object of {size} bytes is already there, more than this work writes there \
                             ({limit}): the job's folder holds something that is not its work"
                        ),
                    )),
                    Err(e) => Err(StageError::retry(
                        ErrorKind::PutError,
                        Stage::Put,
                        format!("{key}: reading back the existing object: {e}"),
                    )),
                }
            }
            Err(StoreError::Denied(m)) => Err(StageError::fatal(ErrorKind::AccessDenied, Stage::Put, format!("{key}: {m}"))),
            Err(e) => Err(StageError::retry(ErrorKind::PutError, Stage::Put, format!("{key}: {e}"))),
        }
    }
    pub(super) async fn put_manifest(
        &self,
        job: &Job,
        work: &Work,
        bucket: &str,
        key: &str,
        bytes: Vec<u8>,
    ) -> Result<(), StageError> {
        let put = self.outputs.put_if_absent(bucket, key, bytes, "application/json").await;
        if !matches!(put, Err(StoreError::Transient(_))) {
            self.note_store_answer();
        }
        match put {
            Ok(PutOutcome::Created) => Ok(()),
            Ok(PutOutcome::AlreadyExists) => self.existing_manifest(job, work, bucket, key).await,
            Err(StoreError::Denied(m)) => Err(StageError::fatal(ErrorKind::AccessDenied, Stage::Put, format!("{key}: {m}"))),
            Err(e) => Err(StageError::retry(ErrorKind::PutError, Stage::Put, format!("{key}: {e}"))),
        }
    }
}

pub(super) fn content_type(media: MediaType) -> &'static str {
    match media {
        MediaType::Png => "image/png",
        MediaType::Webp => "image/webp",
        MediaType::Gif => "image/gif",
        MediaType::OctetStream => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::DeviceWorker;

    /// A pipeline with a 200-ms retry budget and 10-ms backoffs, over local folders, reporting to JSON-lines files.
    fn pipeline(dir: &std::path::Path) -> (Arc<Pipeline>, tokio::sync::mpsc::Receiver<crate::worker::Batch>) {
        let reporter =
            Arc::new(crate::pipeline::JsonlReporter::create(&dir.join("r.jsonl"), &dir.join("d.jsonl")).unwrap());
        pipeline_reporting_to(dir, reporter)
    }

    /// The same pipeline with another reporter.
    fn pipeline_reporting_to(
        dir: &std::path::Path,
        reporter: Arc<dyn crate::pipeline::Reporter>,
    ) -> (Arc<Pipeline>, tokio::sync::mpsc::Receiver<crate::worker::Batch>) {
        let mut settings = PipelineSettings::default();
        settings.retry = crate::settings::RetrySettings { initial_backoff_ms: 10, max_backoff_ms: 10, max_elapsed_seconds: 0.2 };
        let (worker, device) = DeviceWorker::fake(4);
        let store = Arc::new(crate::pipeline::LocalStore::flat(dir));
        (Pipeline::new(settings, &[worker], store.clone(), store, reporter, None).unwrap(), device)
    }

    fn fetch_error() -> StageError {
        StageError::retry(ErrorKind::FetchError, Stage::Fetch, "connection refused")
    }

    #[tokio::test]
    async fn a_store_outage_longer_than_the_budget_does_not_use_it_up() {
        let dir = tempfile::tempdir().unwrap();
        let (p, _device) = pipeline(dir.path());
        let t0 = Instant::now();
        // Down for three budgets, answering nothing; then up.
        let r = p
            .retrying(|| async {
                if t0.elapsed() < Duration::from_millis(600) {
                    Err(fetch_error())
                } else {
                    Ok(7)
                }
            })
            .await;
        assert_eq!(r.map_err(|(e, _)| e.to_string()), Ok(7));
    }

    #[tokio::test]
    async fn an_object_that_fails_while_the_store_answers_others_uses_up_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let (p, _device) = pipeline(dir.path());
        let t0 = Instant::now();
        let r = p
            .retrying(|| async {
                // Other jobs' requests are answered meanwhile.
                p.note_store_answer();
                Err::<(), _>(fetch_error())
            })
            .await;
        let (e, attempts) = r.unwrap_err();
        assert_eq!(e.kind, ErrorKind::RetriesExhausted, "{e}");
        assert!(attempts > 1);
        assert!(t0.elapsed() < Duration::from_secs(2), "gave up after {:?}", t0.elapsed());
    }

    #[tokio::test]
    async fn a_device_failure_uses_up_the_budget_whatever_the_store_does() {
        let dir = tempfile::tempdir().unwrap();
        let (p, _device) = pipeline(dir.path());
        let r = p
            .retrying(|| async { Err::<(), _>(StageError::retry(ErrorKind::DeviceError, Stage::Device, "torch")) })
            .await;
        assert_eq!(r.unwrap_err().0.kind, ErrorKind::RetriesExhausted);
    }

    /// A reporter that panics: the job's task dies without acknowledging it.
    struct PanickingReporter;

    impl crate::pipeline::Reporter for PanickingReporter {
        fn result<'a>(&'a self, _: &'a crate::job::JobResult) -> crate::pipeline::store::BoxFuture<'a, Result<(), crate::pipeline::report::ReportError>> {
            Box::pin(async { panic!("reporter bug") })
        }
        fn dead_letter<'a>(&'a self, _: &'a crate::pipeline::DeadLetter) -> crate::pipeline::store::BoxFuture<'a, Result<(), crate::pipeline::report::ReportError>> {
            Box::pin(async { panic!("reporter bug") })
        }
    }

    #[tokio::test]
    async fn a_panicking_job_stops_the_pipeline_instead_of_freezing_its_ack() {
        let dir = tempfile::tempdir().unwrap();
        let (p, _device) = pipeline_reporting_to(dir.path(), Arc::new(PanickingReporter));
        let acked = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = acked.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let ack: crate::pipeline::Ack = Box::new(move || flag.store(true, Ordering::SeqCst));
        tx.send(crate::pipeline::Envelope::new(b"{not json".to_vec(), None, Some(ack))).await.unwrap();
        drop(tx);
        let r = p.run(rx, tokio_util::sync::CancellationToken::new()).await;
        let e = r.expect_err("a panicking job must stop the pipeline");
        assert_eq!(e.kind, ErrorKind::Internal);
        assert!(e.message.contains("reporter bug"), "{e}");
        assert!(!acked.load(Ordering::SeqCst), "a job whose task panicked must not be acknowledged");
    }
}
