"""Test and benchmark helpers: the service's real composition run in this process, and
small valid PDFs. Nothing here replaces a store or the model."""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Callable

import grpc
import prometheus_client

from aion.api.knowledge.v1 import knowledge_pb2, knowledge_pb2_grpc
from aion.api.v1 import knowledge_pb2 as public
from aion.core import channels, tls
from aion.knowledge import main, qdrant_index
from aion.knowledge import settings as knowledge_settings

# The certificates every service and client of one test process use.
CA = tls.LocalCa()

TERMINAL = (
    public.DOCUMENT_STATE_READY,
    public.DOCUMENT_STATE_FAILED,
    public.DOCUMENT_STATE_SUPERSEDED,
)


SERVICE = knowledge_pb2.DESCRIPTOR.services_by_name["KnowledgeService"].full_name


def in_flight() -> float:
    """RPCs the knowledge service in this process is handling now."""
    return (
        prometheus_client.REGISTRY.get_sample_value(
            "grpc_server_in_flight", {"grpc_service": SERVICE}
        )
        or 0.0
    )


def handled(method: str) -> float:
    """Calls of ``method`` the knowledge service in this process has finished, any status."""
    return sum(
        prometheus_client.REGISTRY.get_sample_value(
            "grpc_server_handled_total",
            {"grpc_service": SERVICE, "grpc_method": method, "grpc_code": code.name},
        )
        or 0.0
        for code in grpc.StatusCode
    )


async def until(check: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    """Wait until ``check()`` holds; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.05)


def make_pdf(*pages: str) -> bytes:
    """A valid PDF with one line of Helvetica text per page (xref offsets computed)."""
    objects: list[bytes] = [b"<< /Type /Catalog /Pages 2 0 R >>", b""]
    kids = []
    font = 3
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for text in pages:
        escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        stream = zlib.compress(f"BT /F1 12 Tf 72 720 Td ({escaped}) Tj ET".encode("latin-1"))
        objects.append(
            b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream)
            + stream
            + b"\nendstream"
        )
        content = len(objects)
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 %d 0 R >> >> /Contents %d 0 R >>" % (font, content)
        )
        kids.append(len(objects))
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (
        b" ".join(b"%d 0 R" % k for k in kids),
        len(kids),
    )
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def stream_pieces(pieces: list[bytes]) -> list[knowledge_pb2.IngestChunk]:
    """IngestStream's data messages for ``pieces``, the final one marked last."""
    return [
        knowledge_pb2.IngestChunk(chunk=public.IngestChunk(data=p, last=i == len(pieces) - 1))
        for i, p in enumerate(pieces)
    ]


def channel(
    address: str,
    *,
    identity: str = "gateway",
    ca: tls.LocalCa = CA,
) -> grpc.aio.Channel:
    """A channel to the knowledge service at ``address``, calling as ``identity``."""
    return channels.connect(address, tls=ca.tls(identity), peer="knowledge")


class Service:
    """The knowledge service's real composition, run in this process, with certificates of
    ``ca`` (its own ``knowledge`` one; its stub calls as the ``gateway``)."""

    def __init__(self, cfg: knowledge_settings.KnowledgeSettings, *, ca: tls.LocalCa = CA) -> None:
        self.cfg = cfg
        self.ca = ca
        self.address = ""
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._channel: grpc.aio.Channel | None = None
        self.stub: knowledge_pb2_grpc.KnowledgeServiceAsyncStub
        self.index: qdrant_index.Index | None = None

    async def __aenter__(self) -> Service:
        ready = asyncio.get_running_loop().create_future()

        def on_ready(address: str) -> None:
            self.address = address
            ready.set_result(address)

        def on_index(index: qdrant_index.Index) -> None:
            self.index = index

        self._task = asyncio.create_task(
            main.run(
                self.cfg,
                self.ca.tls("knowledge"),
                until=self._stop.wait(),
                on_ready=on_ready,
                on_index=on_index,
            )
        )
        done, _ = await asyncio.wait(
            [self._task, ready], timeout=60, return_when=asyncio.FIRST_COMPLETED
        )
        if self._task in done:
            self._task.result()  # raises why it stopped
        assert ready in done, "the knowledge service did not become ready in 60s"
        self._channel = channel(self.address, ca=self.ca)
        self.stub = knowledge_pb2_grpc.KnowledgeServiceStub(self._channel)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._channel is not None:
            await self._channel.close()
        self._stop.set()
        if self._task is not None:
            await asyncio.wait_for(self._task, 30)

    async def ingest(
        self,
        tenant: str,
        kb: str,
        doc: str,
        content: bytes,
        *,
        content_type: str = "text/plain",
        wait: bool = True,
        title: str = "",
        **metadata: str,
    ) -> public.IngestResponse:
        """Ingest, by default waiting until the version is indexed."""
        return await self.stub.Ingest(
            knowledge_pb2.IngestRequest(
                tenant=tenant,
                request=public.IngestRequest(
                    knowledge_base=kb,
                    document_id=doc,
                    content=content,
                    content_type=content_type,
                    metadata=metadata,
                    title=title,
                    wait=wait,
                ),
            ),
            timeout=120,
        )

    async def ingest_stream(
        self,
        tenant: str,
        kb: str,
        doc: str,
        pieces: list[bytes],
        *,
        content_type: str = "text/plain",
        wait: bool = True,
        title: str = "",
        **metadata: str,
    ) -> public.IngestResponse:
        """IngestStream: the header, then ``pieces``, the final one marked last."""
        header = knowledge_pb2.IngestChunk(
            tenant=tenant,
            chunk=public.IngestChunk(
                header=public.IngestHeader(
                    knowledge_base=kb,
                    document_id=doc,
                    content_type=content_type,
                    metadata=metadata,
                    title=title,
                    wait=wait,
                )
            ),
        )
        return await self.stub.IngestStream(iter([header, *stream_pieces(pieces)]), timeout=120)

    async def search(
        self,
        tenant: str,
        kb: str,
        query: str,
        *,
        mode: public.SearchMode.ValueType = public.SEARCH_MODE_UNSPECIFIED,
        top_k: int = 5,
        **filters: str,
    ) -> list[public.SearchHit]:
        """Search's hits."""
        return list(
            (
                await self.stub.Search(
                    knowledge_pb2.SearchRequest(
                        tenant=tenant,
                        request=public.SearchRequest(
                            knowledge_base=kb, query=query, top_k=top_k, filters=filters, mode=mode
                        ),
                    ),
                    timeout=30,
                )
            ).hits
        )

    async def document(self, tenant: str, kb: str, doc: str) -> public.Document:
        """GetDocument."""
        return await self.stub.GetDocument(
            knowledge_pb2.GetDocumentRequest(
                tenant=tenant, request=public.GetDocumentRequest(knowledge_base=kb, document_id=doc)
            ),
            timeout=10,
        )

    async def until(
        self,
        tenant: str,
        kb: str,
        doc: str,
        done: Callable[[public.Document], bool],
        *,
        timeout: float = 90,
    ) -> public.Document:
        """Poll GetDocument until ``done`` holds (or fail after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            found = await self.document(tenant, kb, doc)
            if done(found):
                return found
            assert time.monotonic() < deadline, f"still {found} after {timeout}s"
            await asyncio.sleep(0.1)
