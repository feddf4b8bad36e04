//! The error type of every queue and run-store operation.
//!
//! It is deliberately small: callers mostly need to tell "the backend is down,
//! try later" ([`QueueError::Unavailable`], an HTTP 503) from "you asked for
//! something that does not exist or already exists". It is not a wrapper that
//! exposes the underlying Redis or redb error types.

use std::path::PathBuf;

/// What went wrong in a queue or run-store operation.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The backend could not be reached or did not answer in time (Redis down,
    /// timeout, disk error). Retrying later may succeed.
    #[error("queue backend unavailable: {0}")]
    Unavailable(String),
    /// Stored data could not be decoded, or the store itself is damaged (a page
    /// failed its checksum). Not transient: retrying will not help; the store
    /// needs restoring from a backup.
    #[error("corrupt stored data in {what}: {reason}")]
    Corrupt {
        /// Which stored item was bad, e.g. `run 42`.
        what: String,
        /// Why it could not be decoded.
        reason: String,
    },
    /// The named item does not exist.
    #[error("{kind} {id} not found")]
    NotFound {
        /// What kind of item was looked up, e.g. `run`.
        kind: &'static str,
        /// The id that was looked up.
        id: String,
    },
    /// A run with this id was already inserted.
    #[error("run {0} already exists")]
    AlreadyExists(String),
    /// The item is in a state that forbids the operation (retrying a run that succeeded,
    /// cancelling one that finished).
    #[error("{0}")]
    Conflict(String),
    /// The embedded store file is held open by another process (or another
    /// backend in this process).
    #[error("queue store {} is already open in another process", path.display())]
    Locked {
        /// The store file that is locked.
        path: PathBuf,
    },
    /// There is no store file where one was expected. A new store is only
    /// created on purpose (`EmbeddedBackend::create`), never by opening.
    #[error("no queue store at {}", path.display())]
    StoreMissing {
        /// The store file that does not exist.
        path: PathBuf,
    },
    /// The store file exists but holds nothing (0 bytes): it was truncated or
    /// never written. Opening it would silently start an empty store.
    #[error("queue store {} is empty (0 bytes): it was truncated or never written", path.display())]
    StoreEmpty {
        /// The empty store file.
        path: PathBuf,
    },
    /// A setting or address given to a backend is unusable.
    #[error("invalid queue configuration: {0}")]
    InvalidConfig(String),
}

impl QueueError {
    /// Whether retrying the same call later may succeed (the backend was
    /// unreachable rather than the request being wrong).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, QueueError::Unavailable(_))
    }

    /// Whether stored data is damaged (see [`QueueError::Corrupt`]).
    pub fn is_corrupt(&self) -> bool {
        matches!(self, QueueError::Corrupt { .. })
    }
}
