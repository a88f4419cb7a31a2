"""Internal mTLS against a real grpc.aio server: identities, the allowlist, the health port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aion.api.router.v1 import router_pb2, router_pb2_grpc
from aion.core import authz, channels, errors, pki, server, settings, tls

SERVICE = router_pb2.DESCRIPTOR.services_by_name["Router"].full_name
ALLOW = authz.methods(SERVICE, {"Decide": {"gateway"}})


class Echo(router_pb2_grpc.RouterServicer):
    async def Decide(
        self, request: router_pb2.DecideRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> router_pb2.Decision:
        return router_pb2.Decision(provider=authz.require_tenant(request.tenant))


@pytest.fixture(scope="module")
def ca() -> pki.KeyPair:
    return pki.new_ca()


@pytest.fixture
async def router(ca: pki.KeyPair) -> AsyncIterator[server.GrpcServer]:
    srv = server.GrpcServer(
        name="router",
        host="127.0.0.1",
        port=0,
        grace_s=1,
        tls=tls.Tls.for_identity(ca, "router"),
        allow=ALLOW,
        health_port=0,
    )
    srv.add(router_pb2_grpc.add_RouterServicer_to_server, Echo(), SERVICE)
    async with srv:
        yield srv


async def _decide(chan: grpc.aio.Channel, tenant: str = "t1") -> str:
    stub: router_pb2_grpc.RouterAsyncStub = router_pb2_grpc.RouterStub(chan)
    reply = await stub.Decide(router_pb2.DecideRequest(agent="a", tenant=tenant), timeout=10)
    return reply.provider


async def test_the_allowed_identity_is_served(router: server.GrpcServer, ca: pki.KeyPair) -> None:
    async with channels.connect(
        router.address, tls=tls.Tls.for_identity(ca, "gateway"), peer="router"
    ) as chan:
        assert await _decide(chan) == "t1"


@pytest.mark.parametrize("identity", ["agent", "knowledge", "executor", "operator", "router"])
async def test_another_identity_is_permission_denied(
    router: server.GrpcServer, ca: pki.KeyPair, identity: str
) -> None:
    async with channels.connect(
        router.address, tls=tls.Tls.for_identity(ca, identity), peer="router"
    ) as chan:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _decide(chan)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert identity in str(info.value.details())
    assert "Decide" in str(info.value.details())


async def test_no_client_certificate_is_refused(router: server.GrpcServer, ca: pki.KeyPair) -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=ca.cert_pem)
    async with grpc.aio.secure_channel(
        router.address, creds, options=[("grpc.ssl_target_name_override", "router.aion.internal")]
    ) as chan:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _decide(chan)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_plaintext_is_refused(router: server.GrpcServer) -> None:
    async with grpc.aio.insecure_channel(router.address) as chan:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _decide(chan)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_certificate_from_another_ca_is_refused(
    router: server.GrpcServer, ca: pki.KeyPair
) -> None:
    other = pki.new_ca()
    # Its own gateway certificate, trusting the real CA so only the server's check decides.
    forged = tls.Tls(ca_pem=ca.cert_pem, pair=pki.issue(other, "gateway"), identity="gateway")
    async with channels.connect(router.address, tls=forged, peer="router") as chan:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _decide(chan)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_the_client_checks_the_server_identity(
    router: server.GrpcServer, ca: pki.KeyPair
) -> None:
    async with channels.connect(
        router.address, tls=tls.Tls.for_identity(ca, "gateway"), peer="agent"
    ) as chan:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _decide(chan)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_an_empty_tenant_is_invalid_argument(
    router: server.GrpcServer, ca: pki.KeyPair
) -> None:
    async with channels.connect(
        router.address, tls=tls.Tls.for_identity(ca, "gateway"), peer="router"
    ) as chan:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _decide(chan, tenant="")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "tenant is required" in str(info.value.details())


async def test_the_health_port_answers_health_only(router: server.GrpcServer) -> None:
    async with grpc.aio.insecure_channel(router.health_address) as chan:
        resp = await health_pb2_grpc.HealthStub(chan).Check(
            health_pb2.HealthCheckRequest(service=SERVICE), timeout=5
        )
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _decide(chan)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_no_reflection_on_an_internal_server(
    router: server.GrpcServer, ca: pki.KeyPair
) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    async with channels.connect(
        router.address, tls=tls.Tls.for_identity(ca, "gateway"), peer="router"
    ) as chan:
        stub = reflection_pb2_grpc.ServerReflectionStub(chan)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
            ):
                pass
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_missing_material_names_the_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in tls.VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(settings.SettingsError) as info:
        tls.load()
    assert all(name in str(info.value) for name in tls.VARIABLES)


def test_material_is_read_from_the_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ca: pki.KeyPair
) -> None:
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    pki.issue(ca, "knowledge").write(tmp_path / "tls.crt", tmp_path / "tls.key")
    monkeypatch.setenv("AION_TLS_CA_FILE", str(tmp_path / "ca.crt"))
    monkeypatch.setenv("AION_TLS_CERT_FILE", str(tmp_path / "tls.crt"))
    monkeypatch.setenv("AION_TLS_KEY_FILE", str(tmp_path / "tls.key"))
    assert tls.load().identity == "knowledge"
    monkeypatch.setenv("AION_TLS_KEY_FILE", str(tmp_path / "nope.key"))
    with pytest.raises(settings.SettingsError, match="AION_TLS_KEY_FILE"):
        tls.load()


def _foreign_name_cert(ca: pki.KeyPair, dns: str) -> pki.KeyPair:
    """A certificate the CA signed whose SAN is outside aion.internal."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return pki.KeyPair(
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


async def test_a_certificate_naming_no_identity_is_unauthenticated(
    router: server.GrpcServer, ca: pki.KeyPair
) -> None:
    # Signed by the install CA, CN "gateway", but its SAN is not <identity>.aion.internal.
    stray = tls.Tls(
        ca_pem=ca.cert_pem, pair=_foreign_name_cert(ca, "gateway.example.com"), identity="gateway"
    )
    async with channels.connect(router.address, tls=stray, peer="router") as chan:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _decide(chan)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


# A client-streaming method, as the knowledge service's IngestStream: raw bytes in, their
# concatenation out (an empty stream is INVALID_ARGUMENT, raised as aion's error).
UPLOAD = "/test.Upload/Send"


async def _concatenate(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
) -> bytes:
    received = []
    async for piece in requests:
        if piece == b"refuse":  # refused as it arrives, the client still writing
            err = errors.InvalidArgument("refused mid-stream", field="pieces")
            await errors.send_ahead(context, err)
            raise err
        received.append(piece)
    if not received:
        raise errors.InvalidArgument("nothing was sent", field="pieces")
    return b"".join(received)


@pytest.fixture
async def uploads(ca: pki.KeyPair) -> AsyncIterator[server.GrpcServer]:
    srv = server.GrpcServer(
        name="uploads",
        host="127.0.0.1",
        port=0,
        grace_s=1,
        tls=tls.Tls.for_identity(ca, "knowledge"),
        allow={UPLOAD: frozenset({"gateway"})},
    )
    handler = grpc.method_handlers_generic_handler(
        "test.Upload", {"Send": grpc.stream_unary_rpc_method_handler(_concatenate)}
    )
    srv.add(lambda _, s: s.add_generic_rpc_handlers((handler,)), None, "test.Upload")
    async with srv:
        yield srv


async def _send(srv: server.GrpcServer, ca: pki.KeyPair, identity: str, *pieces: bytes) -> bytes:
    async with channels.connect(
        srv.address, tls=tls.Tls.for_identity(ca, identity), peer="knowledge"
    ) as chan:
        call: Any = chan.stream_unary(UPLOAD)
        return bytes(await call(iter(pieces), timeout=10))


async def test_a_client_stream_admits_its_callers_only(
    uploads: server.GrpcServer, ca: pki.KeyPair
) -> None:
    assert await _send(uploads, ca, "gateway", b"one ", b"two") == b"one two"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _send(uploads, ca, "agent", b"one ")
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "agent may not call /test.Upload/Send" in str(info.value.details())
    # aion's errors cross from a client-streaming handler as their status and field.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _send(uploads, ca, "gateway")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert errors.from_rpc_error(info.value).field == "pieces"


async def test_a_client_stream_refused_while_its_client_writes_gets_the_refusal(
    uploads: server.GrpcServer, ca: pki.KeyPair
) -> None:
    # grpc.aio can report the write that failed as the call ended (INTERNAL) instead of the
    # status (grpc/grpc#36066): a third of such calls here. remote_stream reads the error
    # the server sent ahead.
    async with channels.connect(
        uploads.address, tls=tls.Tls.for_identity(ca, "gateway"), peer="knowledge"
    ) as chan:
        send: Any = chan.stream_unary(UPLOAD)
        for _ in range(20):
            call = send(iter([b"refuse", *[b"x" * 65_536] * 50]), timeout=10)
            with pytest.raises(errors.InvalidArgument, match="refused mid-stream") as info:
                await errors.remote_stream("uploads", call)
            assert info.value.field == "pieces"
