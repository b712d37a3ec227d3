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
    ///
    /// For the store's stages the budget only runs while the store answers: while it answers nothing (an outage),
    /// or denies every request of the kind this one is (reads or writes of its bucket: the daemon's own access is
    /// refused), nothing is the job's fault and the budget starts again. A denial that outlasts the budget while
    /// the same kind of request is served is this job's object: `access_denied`. A denial of the whole scope for
    /// longer than `retry.max_denied_seconds` (when set) stops the pipeline (fatal: the daemon exits non-zero).
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
            let health = &self.store_health;
            if let Some(scope) = &e.denied {
                if let Some(bound) = self.settings.retry.denied_bound() {
                    if health.denied_for(scope).is_some_and(|d| d >= bound) {
                        let message = format!(
                            "{scope} denied for over retry.max_denied_seconds ({} s): {}",
                            self.settings.retry.max_denied_seconds, e.message
                        );
                        return Err((StageError::fatal(ErrorKind::AccessDenied, e.stage, message), attempt));
                    }
                }
                if start.elapsed() >= self.settings.retry.budget() && !health.served_since(scope, start) {
                    // Nothing of this kind is served: the daemon's access is refused, which is no job's fault.
                    tracing::warn!(attempt, scope = %scope, error = %e.message, "the object store denies this access: waiting");
                    start = Instant::now();
                }
            } else if matches!(e.stage, Stage::Fetch | Stage::Put)
                && start.elapsed() >= self.settings.retry.budget()
                && !health.answered_since(start)
            {
                // The store has answered nothing since the budget started: an outage, which is no job's fault.
                // The budget starts again and the job waits, like every other job, for the store to come back.
                metrics::gauge!("glowd_store_unanswered").set(1.0);
                tracing::warn!(attempt, error = %e.message, "the object store answers nothing: waiting for it");
                start = Instant::now();
            }
            if start.elapsed() >= self.settings.retry.budget() {
                let secs = start.elapsed().as_secs_f64();
                let dead = match &e.denied {
                    Some(scope) => StageError::dead(
                        ErrorKind::AccessDenied,
                        e.stage,
                        format!(
                            "denied {attempt} times over {secs:.1} s while the store served other requests ({scope}): {}",
                            e.message
                        ),
                    ),
                    None => StageError::dead(
                        ErrorKind::RetriesExhausted,
                        e.stage,
                        format!("gave up after {attempt} attempts over {secs:.1} s: {}", e.message),
                    ),
                };
                return Err((dead, attempt));
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

    /// Records what the store's answer to a request of `scope` says about the daemon's access: served (anything but
    /// a transient failure or a denial), denied, or nothing (a transient failure).
    pub(super) fn note_store_answer<T>(&self, scope: &StoreScope, answer: &Result<T, StoreError>) {
        match answer {
            Err(StoreError::Transient(_)) => {}
            Err(StoreError::Denied(m)) => self.store_health.denied(scope, m),
            _ => self.store_health.served(scope),
        }
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
        let scope = StoreScope::read(bucket);
        self.note_store_answer(&scope, &got);
        match got {
            Ok(bytes) => Ok(bytes),
            Err(StoreError::NotFound) => {
                Err(StageError::dead(ErrorKind::MissingObject, Stage::Fetch, format!("{uri}: no such object")))
            }
            Err(e @ StoreError::TooLarge { .. }) => {
                Err(StageError::dead(ErrorKind::InputTooLarge, Stage::Fetch, format!("{uri}: {e}")))
            }
            Err(StoreError::Denied(m)) => Err(StageError::denied(Stage::Fetch, scope, format!("{uri}: access denied: {m}"))),
            Err(StoreError::Refused(m)) => {
                Err(StageError::dead(ErrorKind::AccessDenied, Stage::Fetch, format!("{uri}: refused: {m}")))
            }
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
        self.note_store_answer(&StoreScope::write(bucket), &put);
        match put {
            Ok(PutOutcome::Created) => Ok(bytes),
            Ok(PutOutcome::AlreadyExists) => {
                metrics::counter!("glowd_outputs_existing_total").increment(1);
                let stored = self.outputs.get(bucket, key, bound).await;
                self.note_store_answer(&StoreScope::read(bucket), &stored);
                match stored {
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
                    Err(StoreError::Denied(m)) => Err(StageError::denied(
                        Stage::Put,
                        StoreScope::read(bucket),
                        format!("{key}: reading back the existing object: access denied: {m}"),
                    )),
                    Err(e) => Err(StageError::retry(
                        ErrorKind::PutError,
                        Stage::Put,
                        format!("{key}: reading back the existing object: {e}"),
                    )),
                }
            }
            Err(StoreError::Denied(m)) => {
                Err(StageError::denied(Stage::Put, StoreScope::write(bucket), format!("{key}: access denied: {m}")))
            }
            Err(StoreError::Refused(m)) => Err(StageError::fatal(ErrorKind::AccessDenied, Stage::Put, format!("{key}: {m}"))),
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
        self.note_store_answer(&StoreScope::write(bucket), &put);
        match put {
            Ok(PutOutcome::Created) => Ok(()),
            Ok(PutOutcome::AlreadyExists) => self.existing_manifest(job, work, bucket, key).await,
            Err(StoreError::Denied(m)) => {
                Err(StageError::denied(Stage::Put, StoreScope::write(bucket), format!("{key}: access denied: {m}")))
            }
            Err(StoreError::Refused(m)) => Err(StageError::fatal(ErrorKind::AccessDenied, Stage::Put, format!("{key}: {m}"))),
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
        pipeline_with(dir, reporter, |_| {})
    }

    /// The same pipeline with its settings changed by `change`.
    fn pipeline_with(
        dir: &std::path::Path,
        reporter: Arc<dyn crate::pipeline::Reporter>,
        change: impl FnOnce(&mut PipelineSettings),
    ) -> (Arc<Pipeline>, tokio::sync::mpsc::Receiver<crate::worker::Batch>) {
        let mut settings = PipelineSettings::default();
        settings.retry = crate::settings::RetrySettings {
            initial_backoff_ms: 10,
            max_backoff_ms: 10,
            max_elapsed_seconds: 0.2,
            max_denied_seconds: 0.0,
        };
        change(&mut settings);
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
                p.store_health.served(&StoreScope::read("b"));
                Err::<(), _>(fetch_error())
            })
            .await;
        let (e, attempts) = r.unwrap_err();
        assert_eq!(e.kind, ErrorKind::RetriesExhausted, "{e}");
        assert!(attempts > 1);
        assert!(t0.elapsed() < Duration::from_secs(2), "gave up after {:?}", t0.elapsed());
    }

    /// A read of bucket `b` denied (as `fetch` reports it: the store's health first, then the error).
    fn denied_read(p: &Pipeline) -> StageError {
        let scope = StoreScope::read("b");
        p.store_health.denied(&scope, "HTTP 403 AccessDenied");
        StageError::denied(Stage::Fetch, scope, "s3://b/k: access denied")
    }

    #[tokio::test]
    async fn a_store_that_denies_every_read_for_longer_than_the_budget_dead_letters_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (p, _device) = pipeline(dir.path());
        let t0 = Instant::now();
        // Every read denied for three budgets; writes are served meanwhile (another scope); then reads work.
        let r = p
            .retrying(|| async {
                p.store_health.served(&StoreScope::write("b"));
                if t0.elapsed() < Duration::from_millis(600) {
                    Err(denied_read(&p))
                } else {
                    p.store_health.served(&StoreScope::read("b"));
                    Ok(7)
                }
            })
            .await;
        assert_eq!(r.map_err(|(e, _)| e.to_string()), Ok(7));
        assert_eq!(p.store_health.not_ready_reason(), None);
    }

    #[tokio::test]
    async fn a_denied_object_while_its_bucket_serves_others_is_dead_lettered_access_denied() {
        let dir = tempfile::tempdir().unwrap();
        let (p, _device) = pipeline(dir.path());
        let r = p
            .retrying(|| async {
                // Other jobs' reads of the same bucket are served meanwhile.
                p.store_health.served(&StoreScope::read("b"));
                Err::<(), _>(denied_read(&p))
            })
            .await;
        let (e, attempts) = r.unwrap_err();
        assert_eq!(e.kind, ErrorKind::AccessDenied, "{e}");
        assert_eq!(e.disposition, Disposition::DeadLetter, "{e}");
        assert!(e.message.contains("while the store served other requests"), "{e}");
        assert!(attempts > 1);
    }

    #[tokio::test]
    async fn a_denial_longer_than_max_denied_seconds_stops_the_pipeline() {
        let dir = tempfile::tempdir().unwrap();
        let reporter =
            Arc::new(crate::pipeline::JsonlReporter::create(&dir.path().join("r.jsonl"), &dir.path().join("d.jsonl")).unwrap());
        let (p, _device) = pipeline_with(dir.path(), reporter, |s| s.retry.max_denied_seconds = 0.5);
        let t0 = Instant::now();
        let (e, _) = p.retrying(|| async { Err::<(), _>(denied_read(&p)) }).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::AccessDenied, "{e}");
        assert_eq!(e.disposition, Disposition::Fatal, "{e}");
        assert!(e.message.contains("retry.max_denied_seconds"), "{e}");
        assert!(t0.elapsed() >= Duration::from_millis(500), "stopped after {:?}", t0.elapsed());
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

    /// A worker holding one 8x8 RGB model "faces" 1, whose device nobody answers.
    fn faces_worker() -> (DeviceWorker, tokio::sync::mpsc::Receiver<crate::worker::Batch>) {
        let (mut worker, device) = DeviceWorker::fake(4);
        worker.models = Arc::new(vec![ModelInfo {
            name: "faces".into(),
            version: "1".into(),
            image_size: 8,
            channels: 3,
            levels: 2,
            latent_shapes: vec![[6, 4, 4], [12, 2, 2]],
            attributes: vec![],
            fingerprint: "f".into(),
        }]);
        (worker, device)
    }

    fn encode_job(p: &Pipeline, id: &str, input: &str) -> Job {
        let payload = format!(
            r#"{{"version": 1, "id": "{id}", "kind": "encode", "model": {{"name": "faces", "version": "1"}}, "input": "{input}"}}"#
        );
        p.parser.parse(payload.as_bytes()).unwrap()
    }

    fn png(w: u32, h: u32) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(w, h, image::Rgb([9, 99, 199])))
            .write_to(&mut out, image::ImageFormat::Png)
            .unwrap();
        out.into_inner()
    }

    /// A 512x512 PNG of noise: about 770 kB, as it does not compress.
    fn noise_png() -> Vec<u8> {
        let mut x = 0x2545_f491u32;
        let img = image::RgbImage::from_fn(512, 512, |_, _| {
            let mut px = [0u8; 3];
            for c in &mut px {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                *c = x as u8;
            }
            image::Rgb(px)
        });
        let mut out = std::io::Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb8(img).write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    /// A store whose reads take 100 ms each, return `object` and are counted.
    #[derive(Default)]
    struct CountingStore {
        started: std::sync::atomic::AtomicUsize,
        object: Vec<u8>,
    }

    impl crate::pipeline::ObjectStore for CountingStore {
        fn get<'a>(&'a self, _: &'a str, _: &'a str, _: u64) -> crate::pipeline::store::BoxFuture<'a, Result<Vec<u8>, StoreError>> {
            Box::pin(async move {
                self.started.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok(self.object.clone())
            })
        }
        fn put_if_absent<'a>(&'a self, _: &'a str, _: &'a str, _: Vec<u8>, _: &'a str) -> crate::pipeline::store::BoxFuture<'a, Result<PutOutcome, StoreError>> {
            Box::pin(async { Ok(PutOutcome::Created) })
        }
    }

    /// Issue 16 item 3: `max_in_flight_bytes` holds before the fetch. Inputs may be up to 1 MiB, they are 770 kB,
    /// and jobs may hold 2 MiB of them: of 8 jobs, 2 read their input and the other 6 wait before reading anything
    /// (before: all 8 read theirs, then waited for the budget with the bytes in memory).
    #[tokio::test]
    async fn max_in_flight_bytes_is_reserved_before_the_fetch() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = PipelineSettings::default();
        settings.images.max_input_bytes = 1024 * 1024;
        settings.limits.max_in_flight_bytes = 2 * 1024 * 1024;
        let (worker, _device) = faces_worker();
        let store = Arc::new(CountingStore { object: noise_png(), ..Default::default() });
        assert!(store.object.len() > 700 * 1024, "{}", store.object.len());
        let reporter =
            Arc::new(crate::pipeline::JsonlReporter::create(&dir.path().join("r.jsonl"), &dir.path().join("d.jsonl")).unwrap());
        let p = Pipeline::new(settings, &[worker], store.clone(), store.clone(), reporter, None).unwrap();
        for i in 0..8 {
            let p = p.clone();
            tokio::spawn(async move {
                let job = encode_job(&p, &format!("j{i}"), "s3://bkt/in.png");
                let info = p.models[0].0.clone();
                let held = p.fetch_and_decode(&job, &info, &mut Timings::default()).await;
                assert!(held.is_ok());
                // The job goes on to the device with its bytes held.
                tokio::time::sleep(Duration::from_secs(30)).await;
                drop(held);
            });
        }
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(store.started.load(Ordering::SeqCst), 2, "reads started with 2 MiB of 1-MiB inputs in flight");
    }

    /// Issue 16 item 3: a job whose images need more than the whole decode budget is dead-lettered
    /// `over_decode_budget` from the headers, before any pixel is decoded; one that fits is decoded.
    #[tokio::test]
    async fn a_job_over_the_whole_decode_budget_is_refused_from_the_header() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("big.png"), png(64, 64)).unwrap();
        std::fs::write(dir.path().join("small.png"), png(8, 8)).unwrap();
        let mut settings = PipelineSettings::default();
        // 64x64 RGB: 12 KiB decoded, 24 KiB with the crop copy. 8x8: 384 bytes.
        settings.limits.max_in_flight_decoded_bytes = 16 * 1024;
        let (worker, _device) = faces_worker();
        let store = Arc::new(crate::pipeline::LocalStore::flat(dir.path()));
        let reporter =
            Arc::new(crate::pipeline::JsonlReporter::create(&dir.path().join("r.jsonl"), &dir.path().join("d.jsonl")).unwrap());
        let p = Pipeline::new(settings, &[worker], store.clone(), store, reporter, None).unwrap();
        let info = p.models[0].0.clone();
        let big = encode_job(&p, "big", "s3://bkt/big.png");
        let (e, _) = p.fetch_and_decode(&big, &info, &mut Timings::default()).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::OverDecodeBudget, "{e}");
        assert_eq!(e.disposition, Disposition::DeadLetter);
        assert!(e.message.contains("24576 bytes") && e.message.contains("max_in_flight_decoded_bytes"), "{e}");
        let small = encode_job(&p, "small", "s3://bkt/small.png");
        let (images, _) = p.fetch_and_decode(&small, &info, &mut Timings::default()).await.unwrap();
        assert_eq!(images.len(), 1);
        assert_eq!(p.decode_permits.available_permits(), 16, "the decode budget is given back");
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
