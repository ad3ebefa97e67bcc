"""Transport security and caller authentication for every server.

- TLS: a certificate and key make the port TLS-only; a client CA on top makes it mutual
  TLS (clients must present a certificate signed by that CA).
- Bearer tokens: when tokens are configured, every call must carry
  ``authorization: Bearer <token>``; compared in constant time against every configured
  token. Health checks stay open so probes and load balancers need no secret.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import grpc

from mic2e_services.runtime.settings import ServerSettings

#: Methods that never need a token: orchestrators and probes must see health.
EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)


def server_credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    """TLS (or mutual TLS) credentials from the settings; None for plaintext."""
    if not settings.tls_cert_file:
        return None
    if not settings.tls_key_file:
        raise ValueError("tls_cert_file is set but tls_key_file is not")
    pair = (Path(settings.tls_key_file).read_bytes(), Path(settings.tls_cert_file).read_bytes())
    client_ca = (Path(settings.tls_client_ca_file).read_bytes()
                 if settings.tls_client_ca_file else None)
    return grpc.ssl_server_credentials(
        [pair], root_certificates=client_ca, require_client_auth=client_ca is not None)


def load_tokens(settings: ServerSettings) -> list[str]:
    """Tokens from `auth_tokens` (comma-separated) and `auth_tokens_file` (one per line)."""
    raw = settings.auth_tokens.get_secret_value() if settings.auth_tokens else ""
    tokens = [t.strip() for t in raw.split(",") if t.strip()]
    if settings.auth_tokens_file:
        lines = Path(settings.auth_tokens_file).read_text().splitlines()
        tokens += [t.strip() for t in lines if t.strip() and not t.startswith("#")]
    return tokens


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Rejects calls without a valid bearer token with UNAUTHENTICATED."""

    def __init__(self, tokens: Sequence[str]) -> None:
        if not tokens:
            raise ValueError("TokenAuthInterceptor needs at least one token")
        self._tokens = [t.encode() for t in tokens]

    def _authorised(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> bool:
        given = b""
        for key, value in metadata or ():
            if key == "authorization":
                text = value.decode() if isinstance(value, bytes) else value
                if text.startswith("Bearer "):
                    given = text[len("Bearer "):].encode()
        # Compare with every token, without stopping early, so timing tells nothing.
        ok = False
        for token in self._tokens:
            ok |= hmac.compare_digest(given, token)
        return ok and bool(given)

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails],
                                     Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(EXEMPT_PREFIXES):
            return handler
        if self._authorised(handler_call_details.invocation_metadata):
            return handler
        return _denying(handler)


def _denying(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same shape that ends the call with UNAUTHENTICATED."""
    message = "missing or invalid bearer token"

    async def deny_unary(request, context: grpc.aio.ServicerContext):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def deny_stream(request, context: grpc.aio.ServicerContext):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator

    kwargs = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(deny_unary, **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(deny_stream, **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(deny_unary, **kwargs)
    return grpc.stream_stream_rpc_method_handler(deny_stream, **kwargs)
