"""The shared server runtime: bootstrap, worker, codecs, status mapping."""
