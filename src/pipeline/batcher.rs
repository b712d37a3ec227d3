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
