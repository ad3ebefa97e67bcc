"""orchestrator server."""
