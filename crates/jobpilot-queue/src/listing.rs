//! Listing runs: the query an operator or a user asks ([`RunQuery`]), the cursor that pages
//! through the answer ([`RunCursor`]) and the page itself ([`RunPage`]).
//!
//! Both backends answer from a time-ordered index of runs (newest first; a Redis sorted set,
//! a redb table), per user and for everyone, never by scanning every run. Filters other than
//! time are checked on the records read from the index, at most [`MAX_EXAMINED`] per page: a
//! page can come back short with a cursor to go on from, but a request never reads more.
//! Runs accepted while a client pages are newer than its cursor, so they never shift pages.

use serde::{Deserialize, Serialize};

use crate::run::{RunRecord, RunStatus};

/// Runs a page holds at most.
pub const MAX_PAGE: usize = 200;
/// Index entries one page request reads at most.
pub const MAX_EXAMINED: usize = 5_000;

/// Where a page ends: the next page starts with the run just older than this.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunCursor {
    /// Creation time of the last run of the page, unix ms.
    pub created_at_ms: u64,
    /// Its id.
    pub run_id: String,
}

impl RunCursor {
    /// The cursor of `run`.
    pub fn after(run: &RunRecord) -> Self {
        RunCursor {
            created_at_ms: run.created_at_ms,
            run_id: run.run_id.clone(),
        }
    }

    /// The opaque text form, `{ms}.{run_id}`.
    pub fn encode(&self) -> String {
        format!("{}.{}", self.created_at_ms, self.run_id)
    }

    /// Reads [`RunCursor::encode`]'s form.
    ///
    /// # Errors
    /// A message saying what is wrong with it.
    pub fn decode(text: &str) -> Result<Self, String> {
        let (ms, run_id) = text
            .split_once('.')
            .ok_or("is not a cursor returned by this API")?;
        let created_at_ms = ms
            .parse::<u64>()
            .map_err(|_| "is not a cursor returned by this API")?;
        if run_id.is_empty()
            || run_id.len() > 64
            || !run_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("is not a cursor returned by this API".to_owned());
        }
        Ok(RunCursor {
            created_at_ms,
            run_id: run_id.to_owned(),
        })
    }
}

/// Which runs to list.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunQuery {
    /// Only this user's runs (`None`: everyone's, for admins).
    pub user_id: Option<String>,
    /// Only runs in this status.
    pub status: Option<RunStatus>,
    /// Only this agent type.
    pub agent_type: Option<String>,
    /// Created at or after, unix ms.
    pub since_ms: Option<u64>,
    /// Created before, unix ms.
    pub until_ms: Option<u64>,
    /// Only finished runs that took at least this long (acceptance → end), ms.
    pub min_duration_ms: Option<u64>,
    /// Only runs whose last attempt failed with this `error.type`.
    pub error_type: Option<String>,
    /// Runs per page (1 to [`MAX_PAGE`]).
    pub limit: usize,
    /// Continue after this run.
    pub cursor: Option<RunCursor>,
}

impl RunQuery {
    /// Whether `run` passes the filters other than user and time (the index applies those).
    pub fn matches(&self, run: &RunRecord) -> bool {
        if self.user_id.as_ref().is_some_and(|u| *u != run.user_id) {
            return false;
        }
        if self.status.is_some_and(|s| s != run.status) {
            return false;
        }
        if self
            .agent_type
            .as_ref()
            .is_some_and(|a| *a != run.agent_type)
        {
            return false;
        }
        if let Some(min) = self.min_duration_ms {
            match run.duration_ms() {
                Some(d) if d >= min => {}
                _ => return false,
            }
        }
        if let Some(wanted) = &self.error_type {
            let last = run
                .timeline
                .last_attempt()
                .and_then(|a| a.error_type.as_deref());
            if last != Some(wanted.as_str()) {
                return false;
            }
        }
        true
    }

    /// The index range to read: creation times in `[low, high)` and, from a cursor, only
    /// entries older than it.
    pub fn time_range(&self) -> (u64, u64) {
        let low = self.since_ms.unwrap_or(0);
        let high = self.until_ms.unwrap_or(u64::MAX);
        (low, high)
    }

    /// Whether an index entry `(created_at_ms, run_id)` comes after the cursor (is older).
    pub fn is_after_cursor(&self, created_at_ms: u64, run_id: &str) -> bool {
        match &self.cursor {
            None => true,
            Some(c) => (created_at_ms, run_id) < (c.created_at_ms, c.run_id.as_str()),
        }
    }

    /// The page size, within bounds.
    pub fn page_size(&self) -> usize {
        self.limit.clamp(1, MAX_PAGE)
    }
}

/// One page of runs, newest first.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunPage {
    /// The runs.
    pub runs: Vec<RunRecord>,
    /// Pass it as `cursor` for the next page; absent at the end.
    pub next_cursor: Option<String>,
}

/// Collects a page from index entries read newest first: keeps the runs `query` matches,
/// stops at a full page or after [`MAX_EXAMINED`] entries. Feed it entries with
/// [`PageBuilder::offer`] until it says it is done.
#[derive(Debug)]
pub struct PageBuilder<'q> {
    query: &'q RunQuery,
    page: Vec<RunRecord>,
    examined: usize,
    last: Option<RunCursor>,
}

impl<'q> PageBuilder<'q> {
    /// An empty page for `query`.
    pub fn new(query: &'q RunQuery) -> Self {
        PageBuilder {
            query,
            page: Vec::new(),
            examined: 0,
            last: None,
        }
    }

    /// Takes the next index entry `(created_at_ms, run_id)` with its record (`None` when the
    /// record has expired). Returns `false` once the page is complete.
    pub fn offer(&mut self, created_at_ms: u64, run_id: &str, run: Option<RunRecord>) -> bool {
        self.examined += 1;
        self.last = Some(RunCursor {
            created_at_ms,
            run_id: run_id.to_owned(),
        });
        if let Some(run) = run.filter(|r| self.query.matches(r)) {
            self.page.push(run);
        }
        !self.is_done()
    }

    /// Whether the page is full or the read budget is spent.
    pub fn is_done(&self) -> bool {
        self.page.len() >= self.query.page_size() || self.examined >= MAX_EXAMINED
    }

    /// The page; `exhausted` says the index has no more entries in range.
    pub fn finish(self, exhausted: bool) -> RunPage {
        let next_cursor = if exhausted && !self.is_done() {
            None
        } else {
            self.last.map(|c| c.encode())
        };
        RunPage {
            runs: self.page,
            next_cursor,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_junk_is_refused() {
        let cursor = RunCursor {
            created_at_ms: 1_700_000_000_123,
            run_id: "abc_12-3".into(),
        };
        assert_eq!(RunCursor::decode(&cursor.encode()), Ok(cursor));
        for junk in ["", "x", "12", "12.", "a.b", "1.a b", "1.é"] {
            assert!(RunCursor::decode(junk).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn entries_older_than_the_cursor_come_after_it() {
        let query = RunQuery {
            cursor: Some(RunCursor {
                created_at_ms: 10,
                run_id: "m".into(),
            }),
            ..RunQuery::default()
        };
        assert!(query.is_after_cursor(9, "z"));
        assert!(query.is_after_cursor(10, "a"));
        assert!(!query.is_after_cursor(10, "m"));
        assert!(!query.is_after_cursor(11, "a"));
    }
}
