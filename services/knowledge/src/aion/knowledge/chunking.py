"""Text extraction and chunking."""

from __future__ import annotations

import re

from aion.core import errors

SUPPORTED_TYPES = ("text/plain", "text/markdown")


def extract_text(content: bytes, *, content_type: str) -> str:
    """The document's text; only UTF-8 plain text and Markdown are accepted for now."""
    kind = (content_type or "text/plain").split(";")[0].strip().lower()
    if kind not in SUPPORTED_TYPES:
        raise errors.InvalidArgument(
            f"content_type {content_type!r} is not supported; use one of "
            f"{', '.join(SUPPORTED_TYPES)}", field="content_type")
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise errors.InvalidArgument(f"content is not valid UTF-8 (byte {exc.start})",
                                     field="content") from None


def chunk(text: str, *, size: int, overlap: int) -> list[str]:
    """Split on paragraph boundaries into pieces of about ``size`` characters.

    A paragraph longer than ``size`` is cut into windows that overlap by
    ``overlap`` characters so no sentence is lost at a cut.
    """
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    chunks: list[str] = []
    current = ""
    for para in paragraphs:
        if len(para) > size:
            if current:
                chunks.append(current)
                current = ""
            step = max(1, size - overlap)
            chunks.extend(para[i:i + size] for i in range(0, len(para), step)
                          if para[i:i + size].strip())
            continue
        if current and len(current) + 2 + len(para) > size:
            chunks.append(current)
            current = para
        else:
            current = f"{current}\n\n{para}" if current else para
    if current:
        chunks.append(current)
    return chunks
