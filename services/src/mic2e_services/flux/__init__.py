"""flux server."""
