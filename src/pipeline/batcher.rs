//! The pull batcher (text-embeddings-inference's shape): per model, jobs queue their device ops; a batcher per
//! (model, device worker) takes the first queued op, reserves the worker's single slot, then takes whatever else is
//! queued up to the batch budget. While the device is busy the queue fills, so batches grow by themselves under
//! load and a lone job never waits for a linger timer.
use crate::worker::{Batch, BatchItem, DeviceWorker};
use std::sync::Arc;
use tokio::sync::{mpsc, Mutex};

/// The queue of one model, shared by that model's batchers (one per device worker).
pub struct ModelQueue {
    pub tx: mpsc::Sender<BatchItem>,
    rx: Arc<Mutex<mpsc::Receiver<BatchItem>>>,
}

impl ModelQueue {
    /// `capacity`: ops waiting for a batch. Jobs in flight are bounded upstream, so this rarely binds; when it does,
    /// a job's send waits.
    pub fn new(capacity: usize) -> Self {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        ModelQueue { tx, rx: Arc::new(Mutex::new(rx)) }
    }

    /// Starts a batcher task feeding `worker` with this model's ops. It ends when every sender of the queue is
    /// dropped or the worker stops.
    pub fn spawn_batcher(&self, model: usize, worker: DeviceWorker, max_batch: usize) -> tokio::task::JoinHandle<()> {
        let rx = self.rx.clone();
        tokio::spawn(batch_loop(model, rx, worker, max_batch.max(1)))
    }
}

async fn batch_loop(model: usize, rx: Arc<Mutex<mpsc::Receiver<BatchItem>>>, worker: DeviceWorker, max_batch: usize) {
    let mut carry: Option<BatchItem> = None;
    loop {
        // First an op of this model, then the worker's slot. The other order would let the batcher of a model with
        // nothing queued hold the slot while it waits, and every other model on that worker would wait with it.
        let first = match carry.take() {
            Some(item) => item,
            None => match rx.lock().await.recv().await {
                Some(item) => item,
                None => return,
            },
        };
        let Ok(permit) = worker.reserve().await else { return };
        // While waiting for the slot the queue kept filling: take what fits. If another batcher of this model (one
        // per device) holds the queue, it is waiting on an empty queue or taking its own batch: go with what we have.
        let mut budget = first.op.cost();
        let mut items = vec![first];
        if let Ok(mut queue) = rx.try_lock() {
            while budget < max_batch {
                match queue.try_recv() {
                    Ok(item) if budget + item.op.cost() > max_batch => {
                        carry = Some(item);
                        break;
                    }
                    Ok(item) => {
                        budget += item.op.cost();
                        items.push(item);
                    }
                    Err(_) => break,
                }
            }
        }
        // Ops whose job gave up (shutdown) are dropped here rather than computed.
        items.retain(|i| !i.reply.is_closed());
        if items.is_empty() {
            continue;
        }
        metrics::histogram!("glowd_batch_size").record(items.len() as f64);
        metrics::histogram!("glowd_batch_images").record(budget as f64);
        permit.send(Batch { model, items });
    }
}

/// G18 (docs/reliability.md): a fake device that takes `t(b) = a + b·c`, under a saturating load and a trickle.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::{DeviceOp, DeviceOutput};
    use std::time::{Duration, Instant};

    /// What the fake device saw: per batch its size, and per op (seed) how long it queued before its batch started.
    struct Seen {
        sizes: Vec<usize>,
        waits: Vec<(u64, Duration)>,
    }

    /// Plays the device: runs batches for `a + b·c`, answers every op, records what it saw.
    fn fake_device(
        mut rx: mpsc::Receiver<Batch>,
        sent: Arc<std::sync::Mutex<std::collections::HashMap<u64, Instant>>>,
        a: Duration,
        c: Duration,
    ) -> std::thread::JoinHandle<Seen> {
        std::thread::spawn(move || {
            let mut seen = Seen { sizes: Vec::new(), waits: Vec::new() };
            while let Some(batch) = rx.blocking_recv() {
                let start = Instant::now();
                seen.sizes.push(batch.items.len());
                for item in &batch.items {
                    if let DeviceOp::Sample { seed, .. } = item.op {
                        let t = sent.lock().unwrap()[&seed];
                        seen.waits.push((seed, start - t));
                    }
                }
                std::thread::sleep(a + c * batch.items.len() as u32);
                for item in batch.items {
                    let _ = item.reply.send(Ok(DeviceOutput::default()));
                }
            }
            seen
        })
    }

    fn op(seed: u64) -> DeviceOp {
        DeviceOp::Sample { n: 1, temperatures: vec![], seed }
    }

    /// `partitions` producers each sending `per_partition` ops, each waiting for its op's answer before the next
    /// when `trickle` is set (then with a pause of `gap`), or keeping `in_flight` ops outstanding otherwise.
    fn run(max_batch: usize, partitions: u64, per_partition: u64, in_flight: usize, gap: Option<Duration>) -> Seen {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let (worker, rx) = DeviceWorker::fake(max_batch);
        let sent = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
        let device = fake_device(rx, sent.clone(), Duration::from_millis(4), Duration::from_micros(500));
        rt.block_on(async {
            let queue = ModelQueue::new(1024);
            let batcher = queue.spawn_batcher(0, worker, max_batch);
            let mut producers = Vec::new();
            for p in 0..partitions {
                let tx = queue.tx.clone();
                let sent = sent.clone();
                producers.push(tokio::spawn(async move {
                    let window = Arc::new(tokio::sync::Semaphore::new(in_flight));
                    let mut answers = Vec::new();
                    for i in 0..per_partition {
                        let seed = p * 1_000_000 + i;
                        let permit = window.clone().acquire_owned().await.unwrap();
                        if let Some(g) = gap {
                            tokio::time::sleep(g).await;
                        }
                        let (reply, rx) = tokio::sync::oneshot::channel();
                        sent.lock().unwrap().insert(seed, Instant::now());
                        tx.send(BatchItem { op: op(seed), reply }).await.unwrap();
                        answers.push(tokio::spawn(async move {
                            let r = rx.await;
                            drop(permit);
                            r
                        }));
                    }
                    for a in answers {
                        assert!(a.await.unwrap().unwrap().is_ok());
                    }
                }));
            }
            for p in producers {
                p.await.unwrap();
            }
            drop(queue);
            batcher.await.unwrap();
        });
        device.join().unwrap()
    }

    fn percentile(mut v: Vec<Duration>, q: f64) -> Duration {
        v.sort();
        v[((v.len() - 1) as f64 * q).round() as usize]
    }

    /// Saturating load (6 partitions × 16 ops in flight against batches of 16): the batches are full, except
    /// possibly the last few as the load runs out.
    #[test]
    fn under_a_saturating_load_batches_fill_to_at_least_90_percent() {
        let seen = run(16, 6, 200, 16, None);
        let total: usize = seen.sizes.iter().sum();
        assert_eq!(total, 1200, "every op ran exactly once");
        let body = &seen.sizes[..seen.sizes.len() - 4];
        let fill = body.iter().sum::<usize>() as f64 / (body.len() * 16) as f64;
        assert!(fill >= 0.9, "mean batch fill {fill:.3} of max_batch: sizes {:?}", seen.sizes);
        assert!(seen.sizes.iter().all(|&b| b <= 16), "a batch over max_batch");
    }

    /// Trickle (one op at a time, a pause between): nothing waits for company. Every batch is a single op; there is
    /// no linger timer to wait out.
    #[test]
    fn under_a_trickle_every_op_runs_alone_without_waiting_for_company() {
        let seen = run(16, 1, 40, 1, Some(Duration::from_millis(5)));
        assert_eq!(seen.sizes.len(), 40);
        assert!(seen.sizes.iter().all(|&b| b == 1), "{:?}", seen.sizes);
    }

    /// The figures of G18: `cargo test --release --lib batcher -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn bench_batching_efficiency() {
        let seen = run(16, 6, 500, 16, None);
        let body = &seen.sizes[..seen.sizes.len() - 4];
        let fill = body.iter().sum::<usize>() as f64 / (body.len() * 16) as f64;
        let mut worst_by_partition = vec![Duration::ZERO; 6];
        for (seed, w) in &seen.waits {
            let p = (*seed / 1_000_000) as usize;
            worst_by_partition[p] = worst_by_partition[p].max(*w);
        }
        let waits: Vec<Duration> = seen.waits.iter().map(|x| x.1).collect();
        println!(
            "saturating (6 partitions x 16 in flight, max_batch 16, t(b) = 4 ms + b x 0.5 ms): {} batches, mean fill {:.1} %, queue wait p50 {:.1} ms p99 {:.1} ms, worst per partition {:?} ms",
            seen.sizes.len(),
            fill * 100.0,
            percentile(waits.clone(), 0.5).as_secs_f64() * 1e3,
            percentile(waits, 0.99).as_secs_f64() * 1e3,
            worst_by_partition.iter().map(|d| (d.as_secs_f64() * 1e3).round()).collect::<Vec<_>>()
        );
        let seen = run(16, 1, 200, 1, Some(Duration::from_millis(5)));
        let waits: Vec<Duration> = seen.waits.iter().map(|x| x.1).collect();
        println!(
            "trickle (one op every ~5 ms + service): {} batches of mean size {:.2}, queue wait p50 {:.2} ms p99 {:.2} ms (no linger timer: max_wait is 0)",
            seen.sizes.len(),
            seen.sizes.iter().sum::<usize>() as f64 / seen.sizes.len() as f64,
            percentile(waits.clone(), 0.5).as_secs_f64() * 1e3,
            percentile(waits, 0.99).as_secs_f64() * 1e3
        );
    }
}
