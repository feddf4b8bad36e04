//! jobpilot-worker
