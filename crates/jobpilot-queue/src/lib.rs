//! jobpilot-queue
