//! Group commit: one writer thread makes every write of the store, many at a time, in one
//! transaction and one fsync.
//!
//! redb allows one write transaction at a time, and a commit costs far more than the changes
//! in it: every table touched gets new copies of its changed pages, each checksummed, and
//! then the fsync. A run makes four writes (its acceptance, its delivery's attempt, its
//! start, its outcome) across a dozen tables, so with a transaction each, the store's time
//! went to commits, and with a blocking thread waiting for each, to waking threads.
//!
//! Here a write is a job sent to the store's one writer thread, and the caller awaits its
//! answer without holding a thread. The writer takes every job waiting (up to
//! [`MAX_BATCH`]), runs them in order in one transaction, commits it durably, and only then
//! answers each: a write still returns only once it is on disk, and under load one commit
//! covers every write that arrived while the previous one was being made. What a job must
//! do once its write is on disk, whatever its caller does meanwhile (make a new task
//! visible to receivers, say), it does on the writer thread right after the commit.
//!
//! A job that fails with a storage error or panics may have left half its changes in the
//! transaction. The transaction is then rolled back as a whole, and every other job in it
//! hears [`QueueError::Unavailable`] (nothing of theirs was written; they may try again).
//! Jobs that fail for a reason of their own (not found, already exists, a conflict) check
//! before they change anything, so they do not spoil their batch; every write of the store
//! is written that way.
//!
//! Written here because redb leaves the grouping of transactions to its user; it is a
//! channel and a loop.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use redb::WriteTransaction;
use tokio::sync::oneshot;

use super::{Inner, panic_message};
use crate::error::QueueError;

/// Jobs one transaction holds at most, so that one commit's wait stays short under a flood.
const MAX_BATCH: usize = 256;

/// What a job does once its transaction has ended: `Ok` when it was committed, otherwise
/// why it was not.
type Ended = Box<dyn FnOnce(&Inner, Result<(), &str>) + Send>;

/// One write: runs its changes in the transaction (or learns that none could be begun) and
/// returns whether it spoiled the transaction (with why), and what to do once it ends.
type Job = Box<
    dyn FnOnce(&Inner, Result<&WriteTransaction, &str>) -> Option<(Option<String>, Ended)> + Send,
>;

/// The store's writer thread and the way to it. Dropping it lets the thread finish the jobs
/// it has and waits for it, so the store is closed when the last handle is gone.
pub(super) struct Writer {
    jobs: Option<mpsc::Sender<Job>>,
    /// Jobs sent and not yet taken by the writer.
    queued: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the writer thread of `inner`.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when the thread cannot be started.
    pub(super) fn start(inner: Arc<Inner>) -> Result<Self, QueueError> {
        let (jobs, queue) = mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let taken = Arc::clone(&queued);
        let thread = std::thread::Builder::new()
            .name("jobpilot-store-writer".to_owned())
            .spawn(move || write_batches(&inner, &queue, &taken))
            .map_err(|e| QueueError::Unavailable(format!("cannot start the store writer: {e}")))?;
        Ok(Writer {
            jobs: Some(jobs),
            queued,
            thread: Some(thread),
        })
    }

    /// Makes `changes` in the next transaction and answers their result once it is committed
    /// to disk. `after` runs on the writer thread right after the commit, and only if
    /// `changes` succeeded and the commit did, even if the caller has stopped waiting.
    ///
    /// # Errors
    /// The error of `changes`; [`QueueError::Unavailable`] when the transaction could not be
    /// begun or committed, or was rolled back because another job in it failed; the error of
    /// a storage fault for a job that panicked.
    pub(super) async fn write<T, C, A>(&self, changes: C, after: A) -> Result<T, QueueError>
    where
        T: Send + 'static,
        C: FnOnce(&Inner, &WriteTransaction) -> Result<T, QueueError> + Send + 'static,
        A: FnOnce(&Inner, &T) + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |inner, txn| {
            let txn = match txn {
                Ok(txn) => txn,
                Err(reason) => {
                    let _ = reply.send(Err(inner.unavailable(reason)));
                    return None;
                }
            };
            let ran = catch_unwind(AssertUnwindSafe(|| changes(inner, txn)));
            let spoiled = match &ran {
                Ok(Err(e @ (QueueError::Unavailable(_) | QueueError::Corrupt { .. }))) => {
                    Some(e.to_string())
                }
                Err(_) => Some("a write failed unexpectedly".to_owned()),
                Ok(_) => None,
            };
            let ended: Ended = Box::new(move |inner, outcome| {
                let answer = match (ran, outcome) {
                    // redb panics on some damaged pages rather than returning an error;
                    // our own changes do not panic. That is corruption, not "try again".
                    (Err(panic), _) => Err(inner.storage_error(redb::Error::Corrupted(format!(
                        "writing the store failed: {}",
                        panic_message(panic)
                    )))),
                    (Ok(Err(e)), _) => Err(e),
                    (Ok(Ok(value)), Ok(())) => {
                        after(inner, &value);
                        Ok(value)
                    }
                    (Ok(Ok(_)), Err(reason)) => Err(inner.unavailable(format!(
                        "the write was rolled back with its transaction: {reason}"
                    ))),
                };
                let _ = reply.send(answer);
            });
            Some((spoiled, ended))
        });
        let stopped = || QueueError::Unavailable("the store's writer has stopped".to_owned());
        self.queued.fetch_add(1, Ordering::Relaxed);
        self.jobs
            .as_ref()
            .ok_or_else(stopped)?
            .send(job)
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

impl Writer {
    /// Jobs waiting for the writer.
    #[cfg(test)]
    fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop once the jobs sent are done.
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The writer thread: one transaction per batch of waiting jobs, until the channel closes.
fn write_batches(inner: &Inner, queue: &mpsc::Receiver<Job>, queued: &AtomicUsize) {
    while let Ok(first) = queue.recv() {
        let batch: Vec<Job> = std::iter::once(first)
            .chain(queue.try_iter().take(MAX_BATCH - 1))
            .collect();
        queued.fetch_sub(batch.len(), Ordering::Relaxed);
        let txn = match inner.db.begin_write() {
            Ok(txn) => txn,
            Err(e) => {
                let reason = inner.storage_error(e).to_string();
                for job in batch {
                    job(inner, Err(&reason));
                }
                continue;
            }
        };
        let mut ended = Vec::with_capacity(batch.len());
        let mut spoiled = None;
        for job in batch {
            if let Some((spoils, end)) = job(inner, Ok(&txn)) {
                if spoiled.is_none() {
                    spoiled = spoils;
                }
                ended.push(end);
            }
        }
        let outcome = match spoiled {
            Some(reason) => {
                let _ = txn.abort();
                Err(format!("another write in it failed: {reason}"))
            }
            None => txn.commit().map_err(|e| inner.storage_error(e).to_string()),
        };
        inner.count_commit();
        for end in ended {
            end(inner, outcome.as_ref().map(|_| ()).map_err(String::as_str));
        }
    }
}

#[cfg(test)]
mod tests {
    use redb::{ReadableDatabase, ReadableTableMetadata, TableDefinition};

    use super::super::EmbeddedBackend;
    use super::*;
    use crate::settings::QueueSettings;

    const ROWS: TableDefinition<'_, u64, u64> = TableDefinition::new("group_commit_test");

    fn insert(inner: &Inner, txn: &WriteTransaction, key: u64) -> Result<(), QueueError> {
        txn.open_table(ROWS)
            .map_err(|e| inner.storage_error(e))?
            .insert(key, key)
            .map_err(|e| inner.storage_error(e))?;
        Ok(())
    }

    fn rows(backend: &EmbeddedBackend) -> u64 {
        let read = backend.inner.db.begin_read().unwrap();
        read.open_table(ROWS).map_or(0, |t| t.len().unwrap())
    }

    fn store() -> (tempfile::TempDir, EmbeddedBackend) {
        let dir = tempfile::tempdir().unwrap();
        let backend = EmbeddedBackend::create(dir.path(), QueueSettings::default()).unwrap();
        (dir, backend)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_all_land_and_share_commits() {
        const WRITES: u64 = 200;
        let (_dir, backend) = store();
        let before = backend.inner.commits.load(Ordering::Relaxed);
        let writes: Vec<_> = (0..WRITES)
            .map(|key| {
                let backend = backend.clone();
                tokio::spawn(async move {
                    backend
                        .write(move |inner, txn| insert(inner, txn, key), |_, ()| {})
                        .await
                })
            })
            .collect();
        for write in writes {
            write.await.unwrap().unwrap();
        }
        let commits = backend.inner.commits.load(Ordering::Relaxed) - before;
        assert_eq!(rows(&backend), WRITES);
        assert!(
            commits < WRITES,
            "{commits} commits for {WRITES} writes: none was shared"
        );
    }

    #[tokio::test]
    async fn a_write_that_fails_half_way_rolls_back_its_transaction_and_no_other() {
        let (_dir, backend) = store();
        // Hold the writer in a first transaction while two more writes queue behind it, so
        // that those two share the next one.
        let (started, running) = std::sync::mpsc::channel::<()>();
        let (release, held) = std::sync::mpsc::channel::<()>();
        let first = {
            let backend = backend.clone();
            tokio::spawn(async move {
                backend
                    .write(
                        move |inner, txn| {
                            started.send(()).unwrap();
                            held.recv().unwrap();
                            insert(inner, txn, 1)
                        },
                        |_, ()| {},
                    )
                    .await
            })
        };
        tokio::task::spawn_blocking(move || running.recv().unwrap())
            .await
            .unwrap();
        // A write that changes something, then meets a storage error.
        let spoiler = {
            let backend = backend.clone();
            tokio::spawn(async move {
                backend
                    .write(
                        |inner, txn| {
                            insert(inner, txn, 2)?;
                            Err::<(), _>(inner.unavailable("the disk went away"))
                        },
                        |_, ()| {},
                    )
                    .await
            })
        };
        let bystander_after = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let bystander = {
            let backend = backend.clone();
            let ran_after = std::sync::Arc::clone(&bystander_after);
            tokio::spawn(async move {
                backend
                    .write(
                        |inner, txn| insert(inner, txn, 3),
                        move |_, ()| ran_after.store(true, Ordering::SeqCst),
                    )
                    .await
            })
        };
        // Both are queued once the writer holds no job but the first.
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while backend.writer.queued() < 2 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the two writes queue behind the first");
        release.send(()).unwrap();

        first.await.unwrap().unwrap();
        let spoiled = spoiler.await.unwrap().unwrap_err();
        assert!(
            spoiled.to_string().contains("the disk went away"),
            "{spoiled}"
        );
        let rolled_back = bystander.await.unwrap().unwrap_err();
        assert!(rolled_back.is_unavailable(), "{rolled_back}");
        assert!(
            !bystander_after.load(Ordering::SeqCst),
            "no after-commit work"
        );
        assert_eq!(rows(&backend), 1, "only the first write landed");

        // The writer carries on.
        backend
            .write(|inner, txn| insert(inner, txn, 4), |_, ()| {})
            .await
            .unwrap();
        assert_eq!(rows(&backend), 2);
    }

    #[tokio::test]
    async fn a_write_that_panics_is_reported_and_the_writer_carries_on() {
        let (_dir, backend) = store();
        let failed = backend
            .write(
                |inner, txn| -> Result<(), QueueError> {
                    insert(inner, txn, 1)?;
                    panic!("a damaged page")
                },
                |_, ()| {},
            )
            .await
            .unwrap_err();
        assert!(matches!(failed, QueueError::Corrupt { .. }), "{failed}");
        backend
            .write(|inner, txn| insert(inner, txn, 2), |_, ()| {})
            .await
            .unwrap();
        assert_eq!(rows(&backend), 1);
    }
}
