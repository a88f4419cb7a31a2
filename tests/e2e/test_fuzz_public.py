"""Fuzzing every public RPC through the real gateway, auth on (an admin API key).

The requests come from hypothesis strategies built from the message descriptors
of ``aion.api.v1`` (``message_strategy``), so a field or an RPC added to the
public API is fuzzed without touching this file. Besides the generated
requests, Agents.Apply gets malformed manifests (alias bombs, deep nesting,
huge scalars, wrong types) and Knowledge.Ingest and IngestStream malformed documents
(binary, huge metadata, empty; streamed in pieces of several sizes, with or without
their last message, with a true, wrong or no size). A client-streaming RPC gets each
generated message as a stream of one.

What must hold:
- no answer is INTERNAL or UNKNOWN (bad input gets a status saying what to fix);
- no service process died;
- nothing is half-written: every task row has its QUEUED event on the task-events
  topic (which carries the tenant and never the output text), every document
  version row its MinIO object and every original object its version row, and
  the Qdrant points only belong to versions that are indexed or being indexed.

The figures (inputs tried, INTERNAL answers, per RPC) are written to
``fuzz-figures.json`` in the suite's log folder and printed (``-s`` shows them).
AION_FUZZ_EXAMPLES sets the examples per RPC (1,000 by default).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import os
import string
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
import yaml
from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]
from google.protobuf import descriptor, message, message_factory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from minio import Minio
from psycopg.rows import dict_row

from aion.api.events.v1 import events_pb2
from aion.api.v1 import agents_pb2, common_pb2, knowledge_pb2, tasks_pb2
from aion.gateway import keys
from aion.infra import devstack
from aion.infra.kafka import Kafka
from aion.infra.minio import MinIO
from aion.infra.postgres import Postgres

# A thousand calls per RPC on a busy two-core machine take minutes, past the default 300 s.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

F = descriptor.FieldDescriptor
EXAMPLES = int(os.environ.get("AION_FUZZ_EXAMPLES", "1000"))
TENANT = f"fuzz-{uuid.uuid4().hex[:6]}"  # MinIO keeps originals after the database goes
ADMIN_KEY = keys.new_key()[0]
METADATA = (("x-api-key", ADMIN_KEY),)
CALL_TIMEOUT_S = 5.0
SERVICES = [
    tasks_pb2.DESCRIPTOR.services_by_name["Tasks"],
    agents_pb2.DESCRIPTOR.services_by_name["Agents"],
    knowledge_pb2.DESCRIPTOR.services_by_name["Knowledge"],
]
METHODS = [m for s in SERVICES for m in s.methods]
# The answers that say the server, not the input, is at fault.
SERVER_FAULTS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
# The demo agent, answering in a few tokens: valid tasks the fuzzer makes stay cheap.
FUZZ_AGENT = """\
apiVersion: aion.dev/v1alpha1
kind: Agent
metadata:
  name: demo
spec:
  model:
    name: smollm2-135m-instruct
    task: generate
  maxTokens: 4
  routing:
    privacy: local-only
"""


# -- strategies from the descriptors ----------------------------------------------------
NAMEISH = string.ascii_lowercase + string.digits + "-._"
HUGE = [1025, 70_000, 600_000]
INTERESTING = [
    "",
    " ",
    "demo",
    "default",
    "docs",
    "doc-1",
    "a",
    "-",
    "\x00",
    "\u202e",
    "../../etc/passwd",
    "%2F",
    "a/b",
    "' OR 1=1 --",
    "*",
    "日本語",
    "😀" * 3,
    "x" * 255,
    "x" * 256,
    str(uuid.UUID(int=0)),
    "00000000-0000-0000-0000",
]
INT_RANGES = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1),
    F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1),
    F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_INT64: (-(2**63), 2**63 - 1),
    F.TYPE_SINT64: (-(2**63), 2**63 - 1),
    F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1),
    F.TYPE_FIXED64: (0, 2**64 - 1),
}


def texts(known: list[str]) -> st.SearchStrategy[str]:
    """Strings: names that exist, odd values, random text, plausible names, huge ones."""
    return st.one_of(
        st.sampled_from(known + INTERESTING),
        st.text(max_size=24),
        st.text(alphabet=NAMEISH, min_size=1, max_size=20),
        st.sampled_from(HUGE).map(lambda n: "x" * n),
    )


def integers(lo: int, hi: int) -> st.SearchStrategy[int]:
    """Any value of the range, with its edges and small ones drawn often."""
    edges = sorted(
        n for n in {lo, hi, -1, 0, 1, 2, 4, 1000, 100_000, 2**31 - 1, 2**31} if lo <= n <= hi
    )
    return st.one_of(
        st.sampled_from(edges), st.integers(lo, hi), st.integers(max(lo, -5), min(hi, 5000))
    )


def field_value(field: Any, known: list[str], depth: int) -> st.SearchStrategy[Any]:
    """One value of ``field`` (not the repetition)."""
    t = field.type
    if t == F.TYPE_STRING:
        return texts(known)
    if t == F.TYPE_BYTES:
        return st.one_of(
            st.binary(max_size=64),
            st.text(max_size=64).map(str.encode),
            st.sampled_from(HUGE).map(lambda n: os.urandom(n)),
        )
    if t in INT_RANGES:
        return integers(*INT_RANGES[t])
    if t == F.TYPE_DOUBLE:
        return st.floats(allow_nan=True, allow_infinity=True)
    if t == F.TYPE_FLOAT:
        return st.floats(allow_nan=True, allow_infinity=True, width=32)
    if t == F.TYPE_BOOL:
        return st.booleans()
    if t == F.TYPE_ENUM:
        numbers = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(numbers), st.integers(-3, 64))  # unknown values too
    if t == F.TYPE_MESSAGE:
        return message_strategy(field.message_type, known, depth + 1)
    raise AssertionError(f"no strategy for field type {t} ({field.full_name})")


def message_strategy(
    desc: Any, known: list[str], depth: int = 0
) -> st.SearchStrategy[message.Message]:
    """Messages of ``desc``: any subset of its fields set, each to any value of its type
    (repeated fields and maps up to a few entries; nesting up to three levels)."""
    cls = message_factory.GetMessageClass(desc)
    if depth > 3:
        return st.just(cls())
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for f in desc.fields:
        if f.type == F.TYPE_MESSAGE and f.message_type.GetOptions().map_entry:
            key = f.message_type.fields_by_name["key"]
            value = f.message_type.fields_by_name["value"]
            fields[f.name] = st.one_of(
                st.dictionaries(
                    field_value(key, known, depth), field_value(value, known, depth), max_size=4
                ),
                st.integers(100, 2000).map(lambda n: {f"k{i}": "v" * 64 for i in range(n)}),
            )
        elif f.is_repeated:
            fields[f.name] = st.lists(field_value(f, known, depth), max_size=3)
        else:
            fields[f.name] = field_value(f, known, depth)
    messages = st.fixed_dictionaries({}, optional=fields).map(lambda d: build(cls, d))
    if depth:
        return messages
    # Fields this version does not know (a newer client's), which servers must ignore;
    # they also make a message without fields (ListAgentsRequest) fuzzable.
    return st.builds(
        with_unknown_fields,
        messages,
        st.lists(
            st.tuples(
                st.integers(1000, 100_000),
                st.one_of(st.integers(0, 2**64 - 1), st.binary(max_size=32)),
            ),
            max_size=3,
        ),
    )


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def with_unknown_fields(
    msg: message.Message, extra: list[tuple[int, int | bytes]]
) -> message.Message:
    """``msg`` with fields numbered beyond its own: varints, or length-delimited bytes."""
    wire = b"".join(
        _varint(num << 3) + _varint(value)
        if isinstance(value, int)
        else _varint(num << 3 | 2) + _varint(len(value)) + value
        for num, value in extra
    )
    msg.MergeFromString(wire)
    return msg


def build(cls: type[message.Message], values: dict[str, Any]) -> message.Message:
    msg = cls()
    for name, value in values.items():
        f: Any = msg.DESCRIPTOR.fields_by_name[name]
        target: Any = getattr(msg, name) if f.is_repeated or (f.type == F.TYPE_MESSAGE) else None
        if f.type == F.TYPE_MESSAGE and f.message_type.GetOptions().map_entry:
            vfield = f.message_type.fields_by_name["value"]
            for k, v in value.items():
                if vfield.type == F.TYPE_MESSAGE:
                    target[k].CopyFrom(v)
                else:
                    target[k] = v
        elif f.is_repeated:
            target.extend(value)
        elif f.type == F.TYPE_MESSAGE:
            target.CopyFrom(value)
        else:
            setattr(msg, name, value)
    return msg


# -- malformed manifests and documents ----------------------------------------------------
def alias_bomb(levels: int) -> str:
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for i in range(1, levels):
        prev = chr(ord("a") + i - 1)
        cur = chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [{','.join(['*' + prev] * 9)}]")
    return "\n".join(lines) + "\n"


MANIFESTS = [
    # Nine-fold aliases: 7 levels (254 bytes) take the parser ~5 s; deeper ones are left out
    # here, as they would take a busy test machine down until aliases are refused.
    alias_bomb(5),
    alias_bomb(6),
    alias_bomb(7),
    "[" * 10_000 + "]" * 10_000,
    "{a: " * 5_000 + "1" + "}" * 5_000,
    "- " * 3_000 + "x",
    FUZZ_AGENT.replace("name: demo", "name: " + "a" * 1_000_000),
    FUZZ_AGENT.replace("maxTokens: 4", "maxTokens: " + "9" * 5_000),
    FUZZ_AGENT.replace("maxTokens: 4", "maxTokens: 99999999999"),
    FUZZ_AGENT.replace("maxTokens: 4", "maxTokens: 1e308"),
    FUZZ_AGENT.replace("maxTokens: 4", "maxTokens: .nan"),
    FUZZ_AGENT.replace("maxTokens: 4", "maxTokens: [1, 2]"),
    FUZZ_AGENT.replace("task: generate", "task: {a: 1}"),
    FUZZ_AGENT.replace("kind: Agent", "kind: 5"),
    FUZZ_AGENT.replace("spec:", "spec: 7\nextra:"),
    FUZZ_AGENT.replace("name: demo", "name: fuzz-a") + '  instructions: "a\\0b"\n',
    FUZZ_AGENT.replace("name: demo", "name: fuzz-b") + "  description: " + "d" * 2_000_000 + "\n",
    FUZZ_AGENT.replace("name: demo", "name: fuzz-c")
    + "  knowledgeBases: ["
    + ",".join(["kb"] * 50_000)
    + "]\n",
    FUZZ_AGENT.replace("name: demo", "name: fuzz-d") + "  tools: [" + ",".join(["x"] * 65) + "]\n",
    FUZZ_AGENT.replace("name: demo", "name: fuzz-e")
    + "---\n"
    + FUZZ_AGENT.replace("name: demo", "name: Bad_Name"),
    "!!python/object/apply:os.system ['true']",
    "a: !!binary AAAA\n",
    "--- !!set {a, b}\n",
    "\t\x01\x02",
    "%YAML 9.9\n---\na: 1\n",
    "? " + "[" * 200 + "]" * 200 + "\n: 1\n",
    "a: &x 1\nb: *y\n",
    "",
    "---\n---\n---\n",
]

# YAML-ish trees: wrong types anywhere in an Agent-shaped document, or any tree at all.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=20),
)
trees: st.SearchStrategy[Any] = st.deferred(
    lambda: st.one_of(
        scalars,
        st.lists(trees, max_size=3),
        st.dictionaries(st.text(max_size=8), trees, max_size=3),
    )
)


def agent_shaped() -> st.SearchStrategy[str]:
    base = yaml.safe_load(FUZZ_AGENT)

    def mutate(path: list[str], value: Any, name: str) -> str:
        doc = json.loads(json.dumps(base))
        doc["metadata"]["name"] = name
        node = doc
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        return yaml.safe_dump(doc)

    paths = st.sampled_from(
        [
            ["apiVersion"],
            ["kind"],
            ["metadata", "name"],
            ["spec", "model"],
            ["spec", "model", "name"],
            ["spec", "model", "task"],
            ["spec", "maxTokens"],
            ["spec", "routing"],
            ["spec", "routing", "privacy"],
            ["spec", "instructions"],
            ["spec", "knowledgeBases"],
            ["spec", "tools"],
            ["spec"],
        ]
    )
    names = st.one_of(st.just("fuzz-shaped"), st.text(alphabet=NAMEISH, min_size=1, max_size=70))
    return st.builds(mutate, paths, trees, names)


manifests = st.one_of(
    st.sampled_from(MANIFESTS),
    agent_shaped(),
    trees.map(lambda t: yaml.safe_dump(t)),
    st.text(max_size=200),
)

CONTENT_TYPES = [
    "",
    "text/plain",
    "text/markdown",
    "text/html",
    "application/pdf",
    "application/json",
    "application/octet-stream",
    "image/png",
    "x/y",
    "text/plain; charset=utf-16",
]
documents = st.builds(
    lambda kb, doc, content, ctype, meta, title, wait: knowledge_pb2.IngestRequest(
        knowledge_base=kb,
        document_id=doc,
        content=content,
        content_type=ctype,
        metadata=meta,
        title=title,
        wait=wait,
    ),
    st.sampled_from(["docs", "kb-fuzz"]),
    st.one_of(st.just(""), st.text(alphabet=NAMEISH, min_size=1, max_size=12)),
    st.one_of(
        st.just(b""),
        st.binary(max_size=256),
        st.sampled_from(
            [
                b"%PDF-1.4\n" + os.urandom(200),
                b"\x89PNG\r\n\x1a\n" + os.urandom(100),
                b"\xff\xfe" + "hello".encode("utf-16-le"),
                b"\x00" * 1000,
                "é".encode() * 1000,
                b"<html><body>" * 500,
            ]
        ),
        st.sampled_from(HUGE).map(os.urandom),
    ),
    st.sampled_from(CONTENT_TYPES),
    st.one_of(
        st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=4),
        st.integers(100, 5000).map(lambda n: {f"k{i}": "v" * 100 for i in range(n)}),
        st.just({"k" * 100_000: "v"}),
        st.just({"k": "v" * 1_000_000}),
    ),
    st.one_of(st.just(""), st.text(max_size=30), st.just("t" * 200_000)),
    st.booleans(),
)

SIZES = ["none", "exact", "one less", "one more", "negative", "huge"]


def as_stream(
    request: knowledge_pb2.IngestRequest, piece: int, last: bool, size: str
) -> list[knowledge_pb2.IngestChunk]:
    """A document as IngestStream's messages: its header (with ``size`` said of it), then
    its bytes in pieces of ``piece``, the final one marked last or not."""
    data = request.content
    declared = {
        "none": 0,
        "exact": len(data),
        "one less": len(data) - 1,
        "one more": len(data) + 1,
        "negative": -1,
        "huge": 2**62,
    }[size]
    header = knowledge_pb2.IngestHeader(
        knowledge_base=request.knowledge_base,
        document_id=request.document_id,
        title=request.title,
        content_type=request.content_type,
        metadata=request.metadata,
        wait=request.wait,
        size_bytes=declared,
    )
    pieces = [
        knowledge_pb2.IngestChunk(data=data[i : i + piece]) for i in range(0, len(data), piece)
    ] or [knowledge_pb2.IngestChunk(data=b"")]
    pieces[-1].last = last
    return [knowledge_pb2.IngestChunk(header=header), *pieces]


streamed_documents = st.builds(
    as_stream,
    documents,
    st.sampled_from([1000, 4096, 65_536]),
    st.sampled_from([True, True, False]),  # mostly whole streams, so that some are stored
    st.sampled_from(["none", "exact", *SIZES]),
)


# -- the suite and the bookkeeping ----------------------------------------------------------
@dataclasses.dataclass
class Fuzzed:
    """Inputs tried and answers seen, per RPC."""

    tried: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    codes: dict[str, collections.Counter[str]] = dataclasses.field(
        default_factory=lambda: collections.defaultdict(collections.Counter)
    )
    faults: list[dict[str, str]] = dataclasses.field(default_factory=list)
    samples: dict[str, list[str]] = dataclasses.field(
        default_factory=lambda: collections.defaultdict(list)
    )

    def record(
        self, rpc: str, request: message.Message, code: grpc.StatusCode, details: str
    ) -> None:
        self.tried[rpc] += 1
        self.codes[rpc][code.name] += 1
        if len(self.samples[f"{rpc} {code.name}"]) < 3:
            self.samples[f"{rpc} {code.name}"].append(details[:300])
        if code in SERVER_FAULTS:
            self.faults.append(
                {
                    "rpc": rpc,
                    "code": code.name,
                    "details": details[:2000],
                    "request": _short(request),
                }
            )

    def figures(self) -> dict[str, Any]:
        return {
            "examples_per_rpc": EXAMPLES,
            "tried": dict(self.tried),
            "tried_total": sum(self.tried.values()),
            "server_faults": len(self.faults),
            "codes": {k: dict(v) for k, v in self.codes.items()},
            "samples": dict(self.samples),
            "faults": self.faults[:50],
        }


def _short(request: message.Message) -> str:
    text = str(request)
    return text if len(text) < 1500 else text[:1500] + f"... ({len(text)} chars)"


@dataclasses.dataclass
class FuzzSuite:
    suite: devstack.LocalSuite
    env: dict[str, str]
    log_dir: Path
    kafka: Kafka
    minio: MinIO
    channel: grpc.Channel
    known: list[str]
    fuzzed: Fuzzed

    def call(
        self,
        method: descriptor.MethodDescriptor,
        request: message.Message,
        timeout: float = CALL_TIMEOUT_S,
        *,
        messages: list[message.Message] | None = None,
    ) -> None:
        """One call; its status is recorded. A client-streaming method sends ``messages``,
        else ``request`` alone."""
        path = f"/{method.containing_service.full_name}/{method.name}"
        out = message_factory.GetMessageClass(method.output_type)
        rpc = f"{method.containing_service.name}.{method.name}"
        code, details = grpc.StatusCode.OK, ""
        try:
            if method.client_streaming:
                self.channel.stream_unary(
                    path,
                    request_serializer=type(request).SerializeToString,
                    response_deserializer=out.FromString,
                )(iter(messages or [request]), timeout=timeout, metadata=METADATA)
            elif method.server_streaming:
                stream = self.channel.unary_stream(
                    path,
                    request_serializer=type(request).SerializeToString,
                    response_deserializer=out.FromString,
                )
                for _ in stream(request, timeout=timeout, metadata=METADATA):
                    pass
            else:
                self.channel.unary_unary(
                    path,
                    request_serializer=type(request).SerializeToString,
                    response_deserializer=out.FromString,
                )(request, timeout=timeout, metadata=METADATA)
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
        self.fuzzed.record(rpc, request, code, details)

    def dead(self) -> dict[str, int | None]:
        """The services whose process has exited, with the exit code."""
        return {
            s.name: None if s.process is None else s.process.poll()
            for s in self.suite.services.values()
            if s.process is None or s.process.poll() is not None
        }


@pytest.fixture(scope="module")
def fuzz(
    tmp_path_factory: pytest.TempPathFactory, postgres: Postgres, kafka: Kafka, minio: MinIO
) -> Iterator[FuzzSuite]:
    e2e: Any = sys.modules["tests.e2e.conftest"]
    backbone = e2e.Backbone(postgres, kafka, minio)
    log_dir = tmp_path_factory.mktemp("fuzz-suite")
    agents = log_dir / "fuzz-agent.yaml"
    agents.write_text(FUZZ_AGENT)
    env = {
        **backbone.env(),
        "AION_GATEWAY_ALLOW_ANONYMOUS": "false",
        "AION_GATEWAY_API_KEYS": json.dumps(
            [
                {
                    "hash": keys.hash_key(ADMIN_KEY),
                    "tenant": TENANT,
                    "roles": ["admin"],
                    "name": "fuzz",
                }
            ]
        ),
        # The fuzzer calls far faster than a tenant should: no rate limit in its way.
        **{
            f"AION_GATEWAY_{name}": "1000000"
            for name in (
                "RATE_PER_S",
                "RATE_BURST",
                "KEY_RATE_PER_S",
                "KEY_RATE_BURST",
                "TOKENS_PER_MINUTE",
            )
        },
        "AION_AGENT_AGENTS_FILE": str(agents),
        "AION_AGENT_AGENTS_TENANT": TENANT,
    }
    fuzzed = Fuzzed()
    try:
        suite = e2e.start_suite(log_dir, env)
        try:
            with grpc.insecure_channel(
                suite.gateway,
                options=[
                    ("grpc.max_send_message_length", 64 * 1024 * 1024),
                    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ],
            ) as channel:
                yield FuzzSuite(
                    suite, env, log_dir, kafka, minio, channel, ["demo", "docs", "kb-fuzz"], fuzzed
                )
        finally:
            figures = fuzzed.figures()
            (log_dir / "fuzz-figures.json").write_text(json.dumps(figures, indent=2))
            print(
                "\nfuzz figures:",
                json.dumps({k: v for k, v in figures.items() if k not in ("faults", "samples")}),
            )
            for fault in fuzzed.faults[:20]:
                print("fault:", json.dumps(fault)[:3000])
            suite.stop()
    finally:
        backbone.drop_all()


HYPOTHESIS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.function_scoped_fixture,
    ],
)


def _faults_of(fuzz: FuzzSuite, rpc: str) -> list[dict[str, str]]:
    return [f for f in fuzz.fuzzed.faults if f["rpc"] == rpc]


# -- the tests -------------------------------------------------------------------------------
def test_a_task_and_a_document_exist_to_aim_at(fuzz: FuzzSuite) -> None:
    """One real task and one real document, whose ids the fuzzer then also uses."""
    submit = fuzz.channel.unary_unary(
        "/aion.v1.Tasks/Submit",
        request_serializer=tasks_pb2.SubmitRequest.SerializeToString,
        response_deserializer=tasks_pb2.SubmitResponse.FromString,
    )
    got = submit(
        tasks_pb2.SubmitRequest(task=tasks_pb2.TaskSpec(agent="demo", input="Hi")),
        timeout=180,
        metadata=METADATA,
    )
    fuzz.known.append(got.task_id)
    ingest = fuzz.channel.unary_unary(
        "/aion.v1.Knowledge/Ingest",
        request_serializer=knowledge_pb2.IngestRequest.SerializeToString,
        response_deserializer=knowledge_pb2.IngestResponse.FromString,
    )
    doc = ingest(
        knowledge_pb2.IngestRequest(
            knowledge_base="docs",
            document_id="doc-1",
            content=b"Kubernetes runs pods.",
            content_type="text/plain",
            wait=True,
        ),
        timeout=180,
        metadata=METADATA,
    )
    assert doc.document_id == "doc-1"


def test_an_unknown_privacy_is_invalid_argument(fuzz: FuzzSuite) -> None:
    """Found by the fuzzer: an unknown Privacy number gave INTERNAL."""
    submit = fuzz.channel.unary_unary(
        "/aion.v1.Tasks/Submit",
        request_serializer=tasks_pb2.SubmitRequest.SerializeToString,
        response_deserializer=tasks_pb2.SubmitResponse.FromString,
    )
    spec = tasks_pb2.TaskSpec(agent="demo", input="Hi")
    spec.options.privacy = 42  # type: ignore[assignment]
    with pytest.raises(grpc.RpcError) as info:
        submit(tasks_pb2.SubmitRequest(task=spec), timeout=30, metadata=METADATA)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "task.options.privacy" in (info.value.details() or "")


@pytest.mark.parametrize("method", METHODS, ids=lambda m: f"{m.containing_service.name}.{m.name}")
def test_every_public_request_gets_a_status_that_is_not_a_server_fault(
    fuzz: FuzzSuite, method: descriptor.MethodDescriptor
) -> None:
    requests = message_strategy(method.input_type, fuzz.known)

    @HYPOTHESIS
    @given(request=requests)
    def one(request: message.Message) -> None:
        fuzz.call(method, request)

    one()
    rpc = f"{method.containing_service.name}.{method.name}"
    assert fuzz.fuzzed.tried[rpc] >= EXAMPLES
    assert _faults_of(fuzz, rpc) == []
    assert fuzz.dead() == {}


def test_malformed_manifests_are_refused_without_a_server_fault(fuzz: FuzzSuite) -> None:
    apply = agents_pb2.DESCRIPTOR.services_by_name["Agents"].methods_by_name["Apply"]
    for text in MANIFESTS:  # each listed case, whatever hypothesis draws
        fuzz.call(apply, agents_pb2.ApplyAgentsRequest(manifest=text), timeout=60)

    @HYPOTHESIS
    @given(text=manifests)
    def one(text: str) -> None:
        fuzz.call(apply, agents_pb2.ApplyAgentsRequest(manifest=text))

    one()
    assert _faults_of(fuzz, "Agents.Apply") == []
    assert fuzz.dead() == {}


def test_malformed_documents_are_refused_or_stored_whole(fuzz: FuzzSuite) -> None:
    ingest = knowledge_pb2.DESCRIPTOR.services_by_name["Knowledge"].methods_by_name["Ingest"]

    @HYPOTHESIS
    @given(request=documents)
    def one(request: knowledge_pb2.IngestRequest) -> None:
        fuzz.call(ingest, request)

    one()
    assert _faults_of(fuzz, "Knowledge.Ingest") == []
    assert fuzz.dead() == {}


def test_malformed_streamed_documents_are_refused_or_stored_whole(fuzz: FuzzSuite) -> None:
    upload = knowledge_pb2.DESCRIPTOR.services_by_name["Knowledge"].methods_by_name["IngestStream"]
    # Whole documents first, each in pieces of another size: these are stored, and the
    # checks below find them whole.
    text = " ".join(f"Streamed sentence {i} about object storage." for i in range(120))
    for piece in (1000, 4096, 65_536):
        whole = knowledge_pb2.IngestRequest(
            knowledge_base="kb-fuzz",
            document_id=f"streamed-{piece}.txt",
            content=text.encode(),
            content_type="text/plain",
        )
        fuzz.call(upload, whole, messages=list(as_stream(whole, piece, True, "exact")), timeout=60)
    assert fuzz.fuzzed.codes["Knowledge.IngestStream"]["OK"] == 3, fuzz.fuzzed.samples

    @settings(HYPOTHESIS, max_examples=max(EXAMPLES // 4, 10))
    @given(messages=streamed_documents)
    def one(messages: list[knowledge_pb2.IngestChunk]) -> None:
        fuzz.call(upload, messages[0], messages=list(messages))

    one()
    assert _faults_of(fuzz, "Knowledge.IngestStream") == []
    assert fuzz.dead() == {}


# -- nothing half-written ------------------------------------------------------------------
def _dsn(fuzz: FuzzSuite) -> str:
    return fuzz.env["AION_AGENT_POSTGRES_DSN"]


def _wait_for(what: str, check: Callable[[], bool], timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen in {timeout_s:g}s"
        time.sleep(1.0)


def _rows(dsn: str, query: str, *args: Any) -> list[dict[str, Any]]:
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        return conn.execute(query, args).fetchall()


async def _task_events(bootstrap: str, topic: str) -> list[Any]:
    """Every record of the topic, from the beginning to its end now."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    partitions = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
    assert partitions, described
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records: list[Any] = []

        async def behind() -> bool:
            return any([await consumer.position(tp) < end for tp, end in ends.items()])

        while await behind():
            batch = await consumer.getmany(timeout_ms=2000)
            for got in batch.values():
                records.extend(got)
        return records
    finally:
        await consumer.stop()


def test_every_task_has_its_queued_event_with_the_tenant_and_no_output(fuzz: FuzzSuite) -> None:
    dsn = _dsn(fuzz)
    _wait_for(
        "the outbox emptying", lambda: _rows(dsn, "SELECT count(*) AS n FROM outbox")[0]["n"] == 0
    )
    tasks = _rows(dsn, "SELECT id::text AS id, tenant, state, output FROM tasks")
    assert tasks, "the fuzzer made no task at all"
    assert {t["tenant"] for t in tasks} == {TENANT}
    topic = fuzz.env["AION_AGENT_TOPIC_PREFIX"] + "task.events"
    records = asyncio.run(_task_events(fuzz.kafka.bootstrap, topic))
    queued: set[str] = set()
    outputs = [t["output"] for t in tasks if t["output"].strip()]
    assert outputs, "no task produced an output to look for"
    for record in records:
        env = events_pb2.Envelope.FromString(record.value)
        assert env.tenant == TENANT, env
        data = events_pb2.TaskStateChanged()
        assert env.data.Unpack(data)
        assert data.result.output == ""
        if data.status == common_pb2.TASK_STATUS_QUEUED:
            queued.add(data.task_id)
    assert not [t["id"] for t in tasks if t["id"] not in queued]
    blob = b"".join(r.value for r in records)
    assert [o for o in outputs if len(o) > 8 and o.encode() in blob] == []


def test_every_document_version_has_its_object_and_every_object_its_version(
    fuzz: FuzzSuite,
) -> None:
    dsn = _dsn(fuzz)
    _wait_for(
        "indexing to finish",
        lambda: (
            _rows(
                dsn,
                "SELECT count(*) AS n FROM kb_versions WHERE state IN ('PENDING', 'INDEXING')",
            )[0]["n"]
            == 0
        ),
        timeout_s=300,
    )
    # A superseded or failed version's original is removed once no live version uses it.
    versions = _rows(
        dsn,
        "SELECT tenant, knowledge_base, document_id, version, state, object_key FROM kb_versions",
    )
    live = {v["object_key"] for v in versions if v["state"] in ("PENDING", "INDEXING", "READY")}
    empty_documents = _rows(
        dsn,
        "SELECT d.document_id FROM kb_documents d WHERE NOT EXISTS ("
        "SELECT 1 FROM kb_versions v WHERE v.tenant = d.tenant AND "
        "v.knowledge_base = d.knowledge_base AND "
        "v.document_id = d.document_id)",
    )
    assert empty_documents == []
    endpoints = fuzz.minio.endpoints()
    client = Minio(
        endpoints["AION_MINIO_ENDPOINT"],
        access_key=endpoints["AION_MINIO_ACCESS_KEY"],
        secret_key=endpoints["AION_MINIO_SECRET_KEY"],
        secure=False,
    )
    bucket = fuzz.env.get("AION_KNOWLEDGE_MINIO_BUCKET", "aion-knowledge")
    objects = {
        o.object_name for o in client.list_objects(bucket, prefix=f"{TENANT}/", recursive=True)
    }
    keys = {v["object_key"] for v in versions}
    assert live - objects == set(), "live version rows without their original"
    assert objects - keys == set(), "originals without a version row"


def test_no_process_died_and_qdrant_holds_only_indexed_versions(fuzz: FuzzSuite) -> None:
    assert fuzz.dead() == {}
    dsn = _dsn(fuzz)
    docs = {
        (d["knowledge_base"], d["document_id"]): d
        for d in _rows(
            dsn,
            "SELECT knowledge_base, document_id, ready_version FROM kb_documents WHERE tenant = %s",
            TENANT,
        )
    }
    codes = fuzz.suite.stop()  # local Qdrant is one process's at a time
    assert all(code == 0 for code in codes.values()), codes
    from qdrant_client import QdrantClient  # the knowledge service's client

    path = fuzz.env.get("AION_KNOWLEDGE_QDRANT_PATH", str(fuzz.log_dir / "qdrant"))
    client = QdrantClient(path=path)
    try:
        strays = []
        for collection in client.get_collections().collections:
            offset = None
            while True:
                points, offset = client.scroll(
                    collection.name, limit=256, offset=offset, with_payload=True, with_vectors=False
                )
                for p in points:
                    pl = p.payload or {}
                    if pl.get("tenant") != TENANT:
                        continue
                    doc = docs.get((pl.get("knowledge_base"), pl.get("document_id")))
                    if (
                        doc is None
                        or pl.get("version") != doc["ready_version"]
                        or not pl.get("active")
                    ):
                        strays.append(pl | {"text": str(pl.get("text"))[:40]})
                if offset is None:
                    break
    finally:
        client.close()
    assert strays == [], f"{len(strays)} Qdrant points of no indexed version"


def test_the_figures_were_written(fuzz: FuzzSuite) -> None:
    figures = fuzz.fuzzed.figures()
    assert figures["tried_total"] >= EXAMPLES * len(METHODS)
    assert figures["server_faults"] == 0, json.dumps(figures["faults"][:10], indent=1)
