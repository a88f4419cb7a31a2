"""A document's text, from its bytes and content type.

Plain text and Markdown are decoded as UTF-8 and kept as they are (so a
citation's character offsets point into what the author wrote); HTML goes
through inscriptis, which lays text out as a browser would (blocks, lists,
tables) without scripts or styles; PDF through pypdf, page by page.
"""

from __future__ import annotations

import io
import logging

from aion.core import errors

log = logging.getLogger(__name__)

TYPES = ("text/plain", "text/markdown", "text/html", "application/pdf")
# File suffixes the CLI and SDK map to a content type.
SUFFIXES = {
    ".txt": "text/plain",
    ".text": "text/plain",
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".html": "text/html",
    ".htm": "text/html",
    ".pdf": "application/pdf",
}


class ExtractionError(Exception):
    """The bytes hold no usable text of their type; the message says why (for the user)."""


def content_type(value: str) -> str:
    """The normalized content type, or INVALID_ARGUMENT naming the supported ones."""
    kind = (value or "text/plain").split(";")[0].strip().lower()
    if kind == "text/x-markdown":
        kind = "text/markdown"
    if kind not in TYPES:
        raise errors.InvalidArgument(
            f"content_type {value!r} is not supported; use one of {', '.join(TYPES)}",
            field="content_type",
        )
    return kind


def text(content: bytes, kind: str) -> str:
    """The text of ``content`` (``kind`` as ``content_type`` returns it); ExtractionError
    when it is corrupt or holds no text."""
    if kind == "application/pdf":
        out = _pdf(content)
    else:
        try:
            decoded = content.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ExtractionError(f"content is not valid UTF-8 (byte {exc.start})") from None
        out = _html(decoded) if kind == "text/html" else decoded
    if not out.strip():
        raise ExtractionError(f"no text could be extracted from this {kind} document")
    return out


def _html(markup: str) -> str:
    from inscriptis import get_text  # type: ignore[import-untyped]

    return str(get_text(markup))


def _pdf(content: bytes) -> str:
    import pypdf
    from pypdf import errors as pdf_errors

    try:
        reader = pypdf.PdfReader(io.BytesIO(content), strict=False)
        if reader.is_encrypted:
            raise ExtractionError("the PDF is encrypted")
        pages = [page.extract_text() or "" for page in reader.pages]
    except ExtractionError:
        raise
    except (
        pdf_errors.PyPdfError,
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
        IndexError,
        RecursionError,
    ) as exc:
        raise ExtractionError(f"the PDF cannot be read: {type(exc).__name__}: {exc}") from None
    return "\n\n".join(p.strip() for p in pages if p.strip())
