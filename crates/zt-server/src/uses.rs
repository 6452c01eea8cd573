//! Single-use writes (a delegated use spent, a plan step marked used), batched: concurrent
//! decisions' writes are applied in one store transaction, one commit for all of them, the way
//! evidence records are. Each write keeps its own condition and its own answer.

use tokio::sync::{mpsc, oneshot};
use zt_store::{Store, UseOp};

/// Most writes in one transaction.
const MAX_BATCH: usize = 256;

type Pending = (UseOp, oneshot::Sender<Result<bool, String>>);

/// The handle on the batching task.
#[derive(Debug, Clone)]
pub struct Uses {
    queue: mpsc::UnboundedSender<Pending>,
}

impl Uses {
    /// Starts the task that applies writes to `store`; it ends when the last handle is dropped.
    pub fn start(store: Store) -> Self {
        let (queue, mut pending) = mpsc::unbounded_channel::<Pending>();
        tokio::spawn(async move {
            let mut batch: Vec<Pending> = Vec::new();
            while pending.recv_many(&mut batch, MAX_BATCH).await > 0 {
                let (ops, replies): (Vec<UseOp>, Vec<_>) = batch.drain(..).unzip();
                match store.apply_uses(ops).await {
                    Ok(done) if done.len() == replies.len() => {
                        for (reply, done) in replies.into_iter().zip(done) {
                            let _ = reply.send(Ok(done));
                        }
                    }
                    Ok(done) => {
                        let why = format!("{} answers for {} writes", done.len(), replies.len());
                        for reply in replies {
                            let _ = reply.send(Err(why.clone()));
                        }
                    }
                    Err(e) => {
                        let why = crate::error_chain(&e);
                        for reply in replies {
                            let _ = reply.send(Err(why.clone()));
                        }
                    }
                }
            }
        });
        Self { queue }
    }

    /// Applies one write, with whatever others are waiting: whether its condition held, once
    /// committed; an error (nothing known to be written) otherwise.
    pub async fn apply(&self, op: UseOp) -> Result<bool, String> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((op, reply))
            .map_err(|_| "the single-use writer stopped".to_owned())?;
        answer
            .await
            .map_err(|_| "the single-use writer stopped".to_owned())?
    }
}
