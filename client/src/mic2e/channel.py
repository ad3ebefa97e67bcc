"""Channel set-up shared by the client and the orchestrator's downstream channels.

One place decides: message size limits, keepalive, round-robin over every address a DNS
name resolves to (so several replicas behind a headless Service all get calls). Retries
are not decided here but in `mic2e.image_refs`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import grpc

#: Round-robin over every address of the name. No retry policy here: the one policy,
#: the same for unary calls and streams, is `mic2e.image_refs` (made once more on
#: UNAVAILABLE before the first event); gRPC's own transparent retry of calls that never
#: left this process stays on.
SERVICE_CONFIG = {"loadBalancingConfig": [{"round_robin": {}}]}


#: The largest message a mic2e channel sends or takes, in MiB: the servers' default too
#: (`MIC2E_MAX_MESSAGE_MB`), and the TypeScript client's (a test holds them together).
MAX_MESSAGE_MB = 64


def channel_options(max_message_mb: int = MAX_MESSAGE_MB) -> list[tuple[str, object]]:
    """Channel arguments for a mic2e channel."""
    max_bytes = max_message_mb * 1024 * 1024
    return [
        # Reconnect within two seconds to a server that was down or not yet up. gRPC's
        # own backoff grows to two minutes: a channel made before its server listened
        # (an orchestrator started with its model servers, `mic2e-server up` polling
        # health) would otherwise answer UNAVAILABLE long after the server came up.
        ("grpc.initial_reconnect_backoff_ms", 500),
        ("grpc.max_reconnect_backoff_ms", 2000),
        ("grpc.max_send_message_length", max_bytes),
        ("grpc.max_receive_message_length", max_bytes),
        ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def tls_credentials(ca_file: str | None = None, cert_file: str | None = None,
                    key_file: str | None = None) -> grpc.ChannelCredentials:
    """TLS channel credentials: trust `ca_file` (default: the system roots); with
    `cert_file` and `key_file`, present a client certificate (mutual TLS)."""
    def read(path: str | None) -> bytes | None:
        if path is None:
            return None
        with open(path, "rb") as f:
            return f.read()

    if (cert_file is None) != (key_file is None):
        raise ValueError("a client certificate needs both cert_file and key_file")
    return grpc.ssl_channel_credentials(root_certificates=read(ca_file),
                                        private_key=read(key_file),
                                        certificate_chain=read(cert_file))


def target(address: str) -> str:
    """`host:port` -> `dns:///host:port`, so every resolved address is used round-robin."""
    if "://" in address or address.startswith(("dns:", "unix:", "ipv4:", "ipv6:")):
        return address
    return f"dns:///{address}"


def aio_channel(address: str, *, credentials: grpc.ChannelCredentials | None = None,
                max_message_mb: int = MAX_MESSAGE_MB,
                interceptors: Sequence[grpc.aio.ClientInterceptor] = ()) -> grpc.aio.Channel:
    """An asyncio channel with the mic2e options (and optional client interceptors)."""
    opts = channel_options(max_message_mb)
    if credentials is not None:
        return grpc.aio.secure_channel(target(address), credentials, options=opts,
                                       interceptors=list(interceptors) or None)
    return grpc.aio.insecure_channel(target(address), options=opts,
                                     interceptors=list(interceptors) or None)


def sync_channel(address: str, *, credentials: grpc.ChannelCredentials | None = None,
                 max_message_mb: int = MAX_MESSAGE_MB) -> grpc.Channel:
    """A blocking channel with the mic2e options."""
    opts = channel_options(max_message_mb)
    if credentials is not None:
        return grpc.secure_channel(target(address), credentials, options=opts)
    return grpc.insecure_channel(target(address), options=opts)
