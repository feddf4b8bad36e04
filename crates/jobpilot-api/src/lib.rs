//! jobpilot-api
