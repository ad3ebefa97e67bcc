"""TLS, mutual TLS and bearer tokens on real servers (throwaway CA made per test run)."""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import ssl

import grpc
import httpx
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from mic2e import AsyncClient
from mic2e.channel import tls_credentials
from mic2e.errors import UnauthenticatedError, UnavailableError
from mic2e_services.orchestrator import server as orch_server
from mic2e_services.segmentation import server as seg_server

pytestmark = pytest.mark.asyncio(loop_scope="module")



def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _cert(subject: str, key, issuer_cert=None, issuer_key=None, *, ca=False, server=False):
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (x509.CertificateBuilder().subject_name(name)
               .issuer_name(issuer_cert.subject if issuer_cert else name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("pki")
    ca_key = _key()
    ca = _cert("mic2e test CA", ca_key, ca=True)
    out = {}
    for name, cert, key in [
        ("ca", ca, ca_key),
        ("server", *(lambda k: (_cert("localhost", k, ca, ca_key, server=True), k))(_key())),
        ("client", *(lambda k: (_cert("orchestrator", k, ca, ca_key), k))(_key())),
    ]:
        (d / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (d / f"{name}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        out[name], out[f"{name}_key"] = str(d / f"{name}.pem"), str(d / f"{name}.key")
    return out


def png() -> bytes:
    from mic2e import codecs
    from PIL import Image

    return codecs.encode_image(Image.new("RGB", (64, 48), (200, 30, 30)), "png")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def secure_segmentation_server(tiny_sam3, pki):
    """A segmentation server with mutual TLS and a bearer token, on gRPC and HTTP."""
    settings = seg_server.Settings(
        host="127.0.0.1", port=0, http_port=0, model=str(tiny_sam3),
        tls_cert_file=pki["server"], tls_key_file=pki["server_key"],
        tls_client_ca_file=pki["ca"], auth_tokens="s3cret,other")
    server, _ = seg_server.create_server(settings)
    await server.start()
    await server.wait_ready(120)
    yield server
    await server.stop(0)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def secure_segmentation(secure_segmentation_server):
    return f"localhost:{secure_segmentation_server.port}"


def segment_over_https(server, pki, *, token: str | None, client_cert: bool = True,
                       scheme: str = "https") -> httpx.Response:
    """SegmentByText in Connect's JSON on the server's HTTP port."""
    verify = ssl.create_default_context(cafile=pki["ca"])
    if client_cert:
        verify.load_cert_chain(pki["client"], pki["client_key"])
    headers = {"authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(verify=verify, headers=headers, timeout=30) as client:
        return client.post(f"{scheme}://localhost:{server.http.port}"
                           "/mic2e.v1.SegmentationService/SegmentByText", json={
                               "image": {"data": base64.b64encode(png()).decode()},
                               "text": "dog", "scoreThreshold": 0.0})


async def test_https_with_client_certificate_and_token(secure_segmentation_server, pki):
    response = await asyncio.to_thread(segment_over_https, secure_segmentation_server, pki,
                                       token="s3cret")
    assert response.status_code == 200, response.text
    assert response.json()["imageWidth"] == 64


@pytest.mark.parametrize("token", [None, "wrong"])
async def test_https_without_the_token_is_unauthenticated(secure_segmentation_server, pki,
                                                          token):
    response = await asyncio.to_thread(segment_over_https, secure_segmentation_server, pki,
                                       token=token)
    assert response.status_code == 401 and response.json()["code"] == "unauthenticated"


@pytest.mark.parametrize("how", ["no client certificate", "plain http"])
async def test_https_port_refuses_what_the_grpc_port_refuses(secure_segmentation_server, pki,
                                                             how):
    with pytest.raises(httpx.TransportError):
        await asyncio.to_thread(segment_over_https, secure_segmentation_server, pki,
                                token="s3cret", client_cert=how != "no client certificate",
                                scheme="http" if how == "plain http" else "https")


def mtls(pki) -> grpc.ChannelCredentials:
    return tls_credentials(pki["ca"], pki["client"], pki["client_key"])


async def test_plaintext_to_a_tls_port_fails(secure_segmentation):
    async with AsyncClient(secure_segmentation, token="s3cret") as client:
        with pytest.raises(UnavailableError):
            await client.health(timeout=3)


async def test_tls_without_client_certificate_fails_under_mtls(secure_segmentation, pki):
    async with AsyncClient(secure_segmentation, credentials=tls_credentials(pki["ca"]),
                           token="s3cret") as client:
        with pytest.raises(UnavailableError):
            await client.health(timeout=3)


async def test_health_needs_no_token(secure_segmentation, pki):
    async with AsyncClient(secure_segmentation, credentials=mtls(pki)) as client:
        assert await client.health() == "SERVING"


@pytest.mark.parametrize("token", [None, "wrong", "s3cret-but-longer", ""])
async def test_missing_or_wrong_token_is_unauthenticated(secure_segmentation, pki, token):
    async with AsyncClient(secure_segmentation, credentials=mtls(pki), token=token) as client:
        with pytest.raises(UnauthenticatedError):
            await client.segment_by_text(png(), "dog")


@pytest.mark.parametrize("token", ["s3cret", "other"])
async def test_right_token_over_mtls_succeeds(secure_segmentation, pki, token):
    async with AsyncClient(secure_segmentation, credentials=mtls(pki), token=token) as client:
        result = await client.segment_by_text(png(), "dog", score_threshold=0.0)
        assert result.width == 64


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def secure_orchestrator(secure_segmentation, pki, tmp_path_factory):
    """An orchestrator with its own token file, calling the model server over mTLS."""
    tokens = tmp_path_factory.mktemp("tokens") / "tokens.txt"
    tokens.write_text("# callers\nclient-token\n")
    settings = orch_server.Settings(
        host="127.0.0.1", port=0, segmentation_address=secure_segmentation,
        object_clear_address="127.0.0.1:1", flux_address="127.0.0.1:1",
        auth_tokens_file=str(tokens), downstream_tls_ca_file=pki["ca"],
        downstream_tls_cert_file=pki["client"], downstream_tls_key_file=pki["client_key"],
        downstream_token="s3cret")
    server, port = orch_server.create_server(settings)
    await server.start()
    await server.wait_ready(10)
    yield f"127.0.0.1:{port}"
    await server.stop(0)


async def test_orchestrator_token_and_mtls_downstream(secure_orchestrator):
    async with AsyncClient(secure_orchestrator, token="client-token") as client:
        result = await client.segment_by_text(png(), "dog", score_threshold=0.0)
        assert result.provenance.server == "segmentation"


async def test_orchestrator_stream_without_token_is_unauthenticated(secure_orchestrator):
    async with AsyncClient(secure_orchestrator) as client:
        with pytest.raises(UnauthenticatedError):
            [e async for e in client.remove_objects(png(), text="dog")]
        with pytest.raises(UnauthenticatedError):
            [e async for e in client.generate("a bike")]
