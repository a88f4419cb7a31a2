"""Text extraction (every supported type, and the bad ones) and tokenizer chunking."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from aion.core import errors
from aion.knowledge import chunking, extract

LONG = " ".join(
    f"Sentence {i} tells about GPUs, Kafka partitions and Kubernetes pods." for i in range(60)
)


@pytest.fixture(scope="module")
def chunker() -> chunking.Chunker:
    return chunking.Chunker(None, size=40, overlap=8)


def test_chunks_are_token_windows_that_overlap_and_cite_the_text(chunker: chunking.Chunker) -> None:
    pieces = chunker.split(LONG)
    assert len(pieces) > 5
    for piece in pieces:
        assert LONG[piece.start : piece.end] == piece.text
        assert chunker.count(piece.text) <= 40
    for before, after in itertools.pairwise(pieces):
        assert after.start < before.end  # they overlap
        assert after.start > before.start
        # Windows start and end on whole words.
        assert (LONG[after.start - 1] in " ,." and LONG[before.end - 1].isalnum()) or (
            LONG[before.end - 1] in ",."
        )
    assert pieces[0].start == 0
    assert pieces[-1].end == len(LONG)
    # Every word of the text is in some chunk.
    covered: set[int] = set()
    for piece in pieces:
        covered.update(range(piece.start, piece.end))
    assert all(i in covered for i, ch in enumerate(LONG) if not ch.isspace())


def test_a_short_text_is_one_chunk_and_a_blank_one_none(chunker: chunking.Chunker) -> None:
    assert [p.text for p in chunker.split("  Pods run on nodes.  ")] == ["Pods run on nodes."]
    assert chunker.split("  \n\t ") == []
    assert chunker.truncate("one two three four", 2) == "one two"
    assert chunker.truncate("one", 5) == "one"


def test_a_word_longer_than_a_window_is_cut_not_lost() -> None:
    small = chunking.Chunker(None, size=16, overlap=2)
    word = "x" * 300 + " end"
    pieces = small.split(word)
    assert "".join(p.text for p in pieces).endswith("end")
    assert all(small.count(p.text) <= 16 for p in pieces)


def test_the_tokenizer_path_may_name_a_folder(tmp_path: object) -> None:
    bundled = chunking.bundled_tokenizer()
    by_folder = chunking.Chunker(bundled.parent, size=20, overlap=2)
    assert by_folder.count("Kubernetes schedules pods") == chunking.Chunker(
        bundled, size=20, overlap=2
    ).count("Kubernetes schedules pods")


@pytest.mark.parametrize(
    ("given", "kind"),
    [
        ("", "text/plain"),
        ("text/plain; charset=utf-8", "text/plain"),
        ("text/x-markdown", "text/markdown"),
        ("TEXT/HTML", "text/html"),
        ("application/pdf", "application/pdf"),
    ],
)
def test_content_types_are_normalized(given: str, kind: str) -> None:
    assert extract.content_type(given) == kind


def test_an_unsupported_type_is_invalid_argument() -> None:
    with pytest.raises(errors.InvalidArgument, match="not supported") as info:
        extract.content_type("application/msword")
    assert info.value.field == "content_type"


def test_every_format_gives_its_text(pdf: Callable[..., bytes]) -> None:
    assert extract.text("Grüße\n".encode(), "text/plain") == "Grüße\n"
    assert extract.text(b"# Title\n\nBody *text*.", "text/markdown") == "# Title\n\nBody *text*."
    html = (
        b"<html><head><title>t</title><style>p{color:red}</style>"
        b"<script>var hidden = 1;</script></head><body><h1>GPU guide</h1>"
        b"<p>Pods&nbsp;run on <b>nodes</b>.</p><ul><li>one</li><li>two</li></ul></body></html>"
    )
    text = extract.text(html, "text/html")
    assert "GPU guide" in text
    assert "run on nodes." in text
    assert "hidden" not in text
    assert "color" not in text
    assert "* one" in text
    out = extract.text(pdf("First page about GPUs.", "Second page (Kafka)."), "application/pdf")
    assert "First page about GPUs." in out
    assert "Second page (Kafka)." in out
    assert out.index("First") < out.index("Second")


@pytest.mark.parametrize(
    ("content", "kind", "why"),
    [
        (b"%PDF-1.4\nthis is no PDF at all", "application/pdf", "PDF cannot be read"),
        (b"\x00\x01 not a pdf", "application/pdf", "PDF cannot be read"),
        (b"\xff\xfe\xfa", "text/plain", "not valid UTF-8"),
        (b"  \n\n ", "text/markdown", "no text could be extracted"),
        (b"<html><script>only(code)</script></html>", "text/html", "no text could be extracted"),
    ],
)
def test_bad_documents_say_why(content: bytes, kind: str, why: str) -> None:
    with pytest.raises(extract.ExtractionError, match=why):
        extract.text(content, kind)


def test_a_pdf_without_text_is_empty(pdf: Callable[..., bytes]) -> None:
    with pytest.raises(extract.ExtractionError, match="no text could be extracted"):
        extract.text(pdf(" "), "application/pdf")
