"""Imported by `mic2e.cli` before anything loads gRPC (internal).

gRPC's C core writes some failures to stderr by itself (a failed TLS handshake, at INFO
level), besides the status the call returns and the CLI explains in one line; gRPC reads
its log level once, when it loads. A level the user set stays theirs."""

import os

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
