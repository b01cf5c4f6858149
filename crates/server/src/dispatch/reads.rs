//! Point reads, batched: the lanes' document reads, the API's document reads
//! and the lookups of stored replies (an async accept's resend check, a
//! lane's resends found by its commit) go to the store several at a time
//! (`Store::read_many`: one round trip on PostgreSQL), so that under load a round
//! trip serves many requests, as group commit does for writes. At most
//! `BATCHES_IN_FLIGHT` batches run at once; while they do, requests gather
//! into the next, so an idle system pays one channel hop and a busy one
//! pays a round trip per batch, not per read.

use crate::model::{DocKey, Document};
use crate::store::{SharedStore, StoreError, StoredReply};
use std::sync::Arc;
use tokio::sync::{Semaphore, mpsc, oneshot};

const BATCHES_IN_FLIGHT: usize = 4;
const BATCH_MAX: usize = 256;
const CHANNEL_LEN: usize = 4_096;

type Answer<T> = oneshot::Sender<Result<T, StoreError>>;

enum ReadJob {
    Document(DocKey, Answer<Document>),
    Reply((String, String), Answer<Option<StoredReply>>),
}

/// Point reads: through the batcher when the store batches reads, straight
/// to the store otherwise (in process, a batch saves nothing).
#[derive(Clone)]
pub(super) struct Reads {
    store: SharedStore,
    tx: Option<mpsc::Sender<ReadJob>>,
}

fn stopped() -> StoreError {
    StoreError::Unavailable("the read batcher has stopped".into())
}

impl Reads {
    /// Starts the batcher on the current runtime.
    pub(super) fn start(store: SharedStore) -> Reads {
        let tx = store.batches_reads().then(|| {
            let (tx, rx) = mpsc::channel(CHANNEL_LEN);
            tokio::spawn(batcher(store.clone(), rx));
            tx
        });
        Reads { store, tx }
    }

    pub(super) async fn document(&self, doc: &DocKey) -> Result<Document, StoreError> {
        let Some(tx) = &self.tx else {
            return self.store.get(doc).await;
        };
        let (answer, rx) = oneshot::channel();
        tx.send(ReadJob::Document(doc.clone(), answer))
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    pub(super) async fn reply(
        &self,
        client: &str,
        id: &str,
    ) -> Result<Option<StoredReply>, StoreError> {
        let Some(tx) = &self.tx else {
            return self.store.reply(client, id).await;
        };
        let (answer, rx) = oneshot::channel();
        tx.send(ReadJob::Reply((client.to_owned(), id.to_owned()), answer))
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

async fn batcher(store: SharedStore, mut rx: mpsc::Receiver<ReadJob>) {
    let slots = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut jobs = vec![first];
        while jobs.len() < BATCH_MAX {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let store = store.clone();
        tokio::spawn(async move {
            run(store, jobs).await;
            drop(slot);
        });
    }
}

async fn run(store: SharedStore, jobs: Vec<ReadJob>) {
    let mut docs = Vec::new();
    let mut doc_answers = Vec::new();
    let mut replies = Vec::new();
    let mut reply_answers = Vec::new();
    for job in jobs {
        match job {
            ReadJob::Document(doc, answer) => {
                docs.push(doc);
                doc_answers.push(answer);
            }
            ReadJob::Reply(key, answer) => {
                replies.push(key);
                reply_answers.push(answer);
            }
        }
    }
    match store.read_many(&docs, &replies).await {
        Ok((docs, replies)) => {
            answer_all(Ok(docs), doc_answers);
            answer_all(Ok(replies), reply_answers);
        }
        Err(e) => {
            answer_all::<Document>(Err(e.clone()), doc_answers);
            answer_all::<Option<StoredReply>>(Err(e), reply_answers);
        }
    }
}

/// One answer per request, in order; an error goes to each of them. A
/// dropped sender (a short result) reads as "stopped" to its caller.
fn answer_all<T>(found: Result<Vec<T>, StoreError>, answers: Vec<Answer<T>>) {
    match found {
        Ok(found) => {
            for (value, answer) in found.into_iter().zip(answers) {
                let _ = answer.send(Ok(value));
            }
        }
        Err(e) => {
            for answer in answers {
                let _ = answer.send(Err(e.clone()));
            }
        }
    }
}
