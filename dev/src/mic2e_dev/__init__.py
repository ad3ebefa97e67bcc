"""mic2e_dev: tiny random checkpoints in the published layouts (see `tiny`)."""
