"""``aionctl kb``: knowledge bases from a shell.

    aionctl kb ingest --kb NAME [--metadata K=V]... [--no-wait] [--json] PATH...
    aionctl kb status [--kb NAME] [DOCUMENT] [--json]
    aionctl kb search --kb NAME [--mode hybrid|dense|sparse] [--top-k N] [--filter K=V]... QUERY
    aionctl kb delete --kb NAME DOCUMENT

``ingest`` takes files and directories (walked for .txt, .md, .markdown,
.html, .htm and .pdf files). A file's document id is its path relative to
the directory given (or its name, for a file given itself). Each file is
uploaded by Knowledge.IngestStream, in pieces (never read whole, and not
bounded by the gateway's largest message), then the command follows
indexing with a progress bar and ends with a summary; it exits 1 when a
document failed.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import click
from google.protobuf import json_format

from aion.api.v1 import knowledge_pb2
from aion.sdk import errors, options, sync_client

SUFFIXES = options.CONTENT_TYPES
_TERMINAL = (
    knowledge_pb2.DOCUMENT_STATE_READY,
    knowledge_pb2.DOCUMENT_STATE_FAILED,
    knowledge_pb2.DOCUMENT_STATE_SUPERSEDED,
)
_UNSAFE = re.compile(r"[^A-Za-z0-9._/-]")


def state_name(state: int) -> str:
    """``READY`` for DOCUMENT_STATE_READY, and so on."""
    return knowledge_pb2.DocumentState.Name(state).removeprefix(  # type: ignore[arg-type]
        "DOCUMENT_STATE_"
    )


@dataclasses.dataclass(frozen=True)
class Upload:
    """A file to ingest and the document id it gets."""

    path: Path
    document_id: str
    content_type: str


def document_id(relative: Path) -> str:
    """A document id from a relative path: '/'-separated, other odd characters as '_'."""
    name = _UNSAFE.sub("_", relative.as_posix())
    return name.lstrip("._-/") or "document"


def collect(paths: Iterable[Path]) -> list[Upload]:
    """The supported files of ``paths`` (directories walked), each with its document id."""
    found: list[Upload] = []
    for path in paths:
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                kind = SUFFIXES.get(file.suffix.lower())
                if kind is not None:
                    found.append(Upload(file, document_id(file.relative_to(path)), kind))
        elif path.is_file():
            kind = SUFFIXES.get(path.suffix.lower())
            if kind is None:
                raise click.BadParameter(
                    f"{path}: unsupported file type (use {', '.join(sorted(SUFFIXES))})"
                )
            found.append(Upload(path, document_id(Path(path.name)), kind))
        else:
            raise click.BadParameter(f"{path}: no such file or directory")
    return found


def _pairs(values: Sequence[str], what: str) -> dict[str, str]:
    out = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{what} {value!r} is not KEY=VALUE")
        out[key] = val
    return out


def _doc_dict(doc: knowledge_pb2.Document) -> dict[str, Any]:
    return json_format.MessageToDict(
        doc, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def status_table(docs: Sequence[knowledge_pb2.Document]) -> str:
    """Documents as a table: knowledge base, id, version, state, chunks, error."""
    header = ("KB", "DOCUMENT", "VERSION", "STATE", "CHUNKS", "ERROR")
    lines = [header] + [
        (
            d.knowledge_base,
            d.document_id,
            str(d.version),
            state_name(d.state),
            f"{d.chunks_done}/{d.chunks}",
            d.error[:80],
        )
        for d in docs
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def register(main: click.Group, client: Callable[[click.Context], sync_client.Client]) -> None:
    """Add the ``kb`` command group to ``main``; ``client`` makes the gateway client."""

    @main.group()
    def kb() -> None:
        """Knowledge bases: ingest documents, follow their indexing, search, delete."""

    @kb.command()
    @click.option("--kb", "knowledge_base", required=True, help="The knowledge base.")
    @click.option("--metadata", "-m", multiple=True, help="KEY=VALUE on every document.")
    @click.option("--title", default="", help="Title (one file only; else the file name).")
    @click.option(
        "--wait/--no-wait",
        default=True,
        show_default=True,
        help="Follow indexing until every document is READY or FAILED.",
    )
    @click.option("--json", "as_json", is_flag=True, help="Print each document as JSON.")
    @click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
    @click.pass_context
    def ingest(
        ctx: click.Context,
        knowledge_base: str,
        metadata: tuple[str, ...],
        title: str,
        wait: bool,
        as_json: bool,
        paths: tuple[Path, ...],
    ) -> None:
        """Upload files and directories into a knowledge base."""
        uploads = collect(paths)
        if not uploads:
            raise click.UsageError("no .txt, .md, .html or .pdf files found")
        meta = _pairs(metadata, "--metadata")
        api = client(ctx)
        failed: dict[str, str] = {}
        accepted: list[str] = []
        unchanged = 0
        with click.progressbar(
            uploads,
            label="uploading",
            file=sys.stderr,
            item_show_func=lambda u: u.document_id if u else "",
        ) as bar:
            for item in bar:
                try:
                    resp = api.ingest_file(
                        knowledge_base,
                        item.document_id,
                        item.path,
                        title=title or item.path.name,
                        content_type=item.content_type,
                        metadata=meta,
                        wait=False,
                    )
                except errors.AionError as exc:
                    failed[item.document_id] = exc.message
                    continue
                except OSError as exc:  # unreadable, or gone since it was listed
                    failed[item.document_id] = f"cannot read {item.path}: {exc.strerror or exc}"
                    continue
                accepted.append(item.document_id)
                unchanged += resp.unchanged
        docs = (
            _follow(api, knowledge_base, accepted)
            if wait
            else [api.get_document(knowledge_base, d) for d in accepted]
        )
        for doc in docs:
            if doc.state == knowledge_pb2.DOCUMENT_STATE_FAILED:
                failed[doc.document_id] = doc.error
        if as_json:
            for doc in docs:
                click.echo(json.dumps(_doc_dict(doc)))
        ready = sum(d.state == knowledge_pb2.DOCUMENT_STATE_READY for d in docs)
        chunks = sum(d.chunks for d in docs if d.state == knowledge_pb2.DOCUMENT_STATE_READY)
        summary = (
            f"{len(uploads)} files: {ready} ready ({chunks} chunks), {unchanged} "
            f"unchanged, {len(failed)} failed"
        )
        if not wait:
            summary += f", {len(accepted) - len(failed)} queued"
        click.echo(summary, err=True)
        for doc_id, why in sorted(failed.items()):
            click.echo(f"  {doc_id}: {why}", err=True)
        if failed:
            raise click.exceptions.Exit(1)

    @kb.command()
    @click.option("--kb", "knowledge_base", default="", help="One knowledge base (else all).")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
    @click.argument("document", required=False)
    @click.pass_context
    def status(
        ctx: click.Context, knowledge_base: str, as_json: bool, document: str | None
    ) -> None:
        """Documents with their version, state, progress and error."""
        api = client(ctx)
        if document is not None:
            if not knowledge_base:
                raise click.UsageError("a DOCUMENT needs --kb")
            docs = [api.get_document(knowledge_base, document)]
        else:
            docs, token = [], ""
            while True:
                page = api.list_documents(knowledge_base, page_size=500, page_token=token)
                docs.extend(page.documents)
                token = page.next_page_token
                if not token:
                    break
        if as_json:
            for doc in docs:
                click.echo(json.dumps(_doc_dict(doc)))
        else:
            click.echo(status_table(docs))

    @kb.command()
    @click.option("--kb", "knowledge_base", required=True, help="The knowledge base.")
    @click.option(
        "--mode",
        type=click.Choice(["hybrid", "dense", "sparse"]),
        default="hybrid",
        show_default=True,
    )
    @click.option("--top-k", type=click.IntRange(1, 50), default=5, show_default=True)
    @click.option("--filter", "filters", multiple=True, help="KEY=VALUE the metadata must have.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
    @click.argument("query")
    @click.pass_context
    def search(
        ctx: click.Context,
        knowledge_base: str,
        mode: str,
        top_k: int,
        filters: tuple[str, ...],
        as_json: bool,
        query: str,
    ) -> None:
        """The best chunks for QUERY, each with its citation."""
        hits = client(ctx).search(
            knowledge_base, query, top_k=top_k, mode=mode, filters=_pairs(filters, "--filter")
        )
        for hit in hits:
            if as_json:
                click.echo(
                    json.dumps(json_format.MessageToDict(hit, preserving_proto_field_name=True))
                )
                continue
            click.echo(
                f"{hit.score:.4f}  {hit.document_id} v{hit.version} "
                f"chunk {hit.chunk_index} [{hit.char_start}:{hit.char_end}]"
            )
            click.echo("    " + " ".join(hit.text.split())[:300])

    @kb.command()
    @click.option("--kb", "knowledge_base", required=True, help="The knowledge base.")
    @click.argument("document")
    @click.pass_context
    def delete(ctx: click.Context, knowledge_base: str, document: str) -> None:
        """Remove a document from every store."""
        resp = client(ctx).delete_document(knowledge_base, document)
        click.echo(f"deleted {document} ({resp.chunks_removed} chunks)")


def _follow(
    api: sync_client.Client, knowledge_base: str, ids: Sequence[str]
) -> list[knowledge_pb2.Document]:
    """Poll until every document is READY, FAILED or SUPERSEDED, with a progress bar."""
    latest: dict[str, knowledge_pb2.Document] = {}
    waiting = list(ids)
    delay = 0.2
    with click.progressbar(length=len(ids), label="indexing", file=sys.stderr) as bar:
        while waiting:
            still = []
            for doc_id in waiting:
                doc = api.get_document(knowledge_base, doc_id)
                latest[doc_id] = doc
                if doc.state in _TERMINAL:
                    bar.update(1)
                else:
                    still.append(doc_id)
            waiting = still
            if waiting:
                time.sleep(delay)
                delay = min(delay * 1.5, 2.0)
    return [latest[d] for d in ids]
