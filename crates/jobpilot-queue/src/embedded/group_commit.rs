//! Group commit: many transactions made durable by one fsync.
//!
//! Every write transaction of the store commits with [`Durability::None`] (its pages are
//! written, nothing is synced) and then waits here until a durable commit covers it. The
//! first waiter that finds no sync in progress runs one: an empty write transaction
//! committed with [`Durability::Immediate`], which in redb persists every commit made
//! before it. Transactions that commit while that sync runs wait for the next one, which
//! one of them starts. Under load one fsync thus covers every transaction committed since
//! the last; with a single writer it costs what a durable commit costs.
//!
//! What a caller gets is unchanged: a write returns only once it is durable, so an
//! acknowledged run survives a crash. What changes is what other readers of this process
//! may see: a committed change is visible to them up to one fsync before it is durable,
//! and a crash in that window loses it together with its unanswered caller.
//!
//! Written here because redb leaves the grouping to its user; it is a counter, a flag
//! and a condition variable.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use redb::{Database, Durability, WriteTransaction};

/// Counts commits and the durable syncs that cover them.
#[derive(Default)]
pub(super) struct GroupCommit {
    state: Mutex<Progress>,
    synced: Condvar,
}

#[derive(Default)]
struct Progress {
    /// Commits made so far (each commit's ticket is the count after it).
    committed: u64,
    /// Every commit with a ticket up to this one is durable.
    durable: u64,
    /// Whether a waiter is running a durable commit now.
    syncing: bool,
    /// Durable commits run so far.
    syncs: u64,
}

/// Clears the `syncing` flag however the sync ends, a panic included, and wakes the
/// waiters so one of them can take over.
struct SyncGuard<'a>(&'a GroupCommit);

impl Drop for SyncGuard<'_> {
    fn drop(&mut self) {
        self.0.progress().syncing = false;
        self.0.synced.notify_all();
    }
}

impl GroupCommit {
    fn progress(&self) -> MutexGuard<'_, Progress> {
        // Only counters and a flag, each updated in one statement: a poisoned lock still
        // guards consistent data.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Commits `txn` and returns once it is durable. Blocks the calling thread (a blocking
    /// pool thread) while another waiter's sync runs.
    pub(super) fn commit(
        &self,
        db: &Database,
        mut txn: WriteTransaction,
    ) -> Result<(), redb::Error> {
        // Refused only for a transaction that changed persistent savepoints, which this
        // store never makes; it then commits durably on its own, which is just as safe.
        let _ = txn.set_durability(Durability::None);
        txn.commit()?;
        let ticket = {
            let mut progress = self.progress();
            progress.committed += 1;
            progress.committed
        };
        self.wait_durable(db, ticket)
    }

    /// Waits until the commit with `ticket` is durable, running the sync itself when no
    /// other waiter does.
    fn wait_durable(&self, db: &Database, ticket: u64) -> Result<(), redb::Error> {
        let mut progress = self.progress();
        loop {
            if progress.durable >= ticket {
                return Ok(());
            }
            if progress.syncing {
                progress = self
                    .synced
                    .wait(progress)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            progress.syncing = true;
            drop(progress);
            let guard = SyncGuard(self);
            let covered = self.sync(db)?;
            {
                let mut done = self.progress();
                done.durable = done.durable.max(covered);
                done.syncs += 1;
            }
            drop(guard);
            progress = self.progress();
        }
    }

    /// One durable commit; returns the ticket up to which it made commits durable.
    fn sync(&self, db: &Database) -> Result<u64, redb::Error> {
        let txn = db.begin_write()?;
        // Holding the write transaction, no other commit can finish: every ticket
        // counted by now belongs to a commit this one persists. (A commit that finished
        // but is not counted yet is persisted too, and merely waits for the next sync.)
        let covered = self.progress().committed;
        txn.commit()?;
        Ok(covered)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use redb::{ReadableDatabase, ReadableTableMetadata, TableDefinition};

    use super::*;

    const TABLE: TableDefinition<'_, u64, u64> = TableDefinition::new("t");

    #[test]
    fn concurrent_commits_are_all_durable_and_share_syncs() {
        const THREADS: u64 = 8;
        const EACH: u64 = 25;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("group.redb");
        let db = Arc::new(Database::create(&path).unwrap());
        let group = Arc::new(GroupCommit::default());
        let writers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (db, group) = (Arc::clone(&db), Arc::clone(&group));
                std::thread::spawn(move || {
                    for i in 0..EACH {
                        let txn = db.begin_write().unwrap();
                        txn.open_table(TABLE)
                            .unwrap()
                            .insert(t * EACH + i, i)
                            .unwrap();
                        group.commit(&db, txn).unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        let progress = group.progress();
        assert_eq!(progress.committed, THREADS * EACH);
        assert!(
            progress.durable >= progress.committed,
            "every commit durable"
        );
        assert!(
            progress.syncs < progress.committed,
            "{} syncs for {} commits: none was shared",
            progress.syncs,
            progress.committed
        );
        drop(progress);

        // Everything is in the file after it is closed and opened again.
        drop(db);
        let db = Database::open(&path).unwrap();
        let read = db.begin_read().unwrap();
        assert_eq!(
            read.open_table(TABLE).unwrap().len().unwrap(),
            THREADS * EACH
        );
    }
}
