"""object_clear server."""
