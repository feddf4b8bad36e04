//! jobpilot-agents
