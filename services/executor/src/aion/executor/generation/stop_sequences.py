"""Stop sequences over streamed text: emit what is safe, hold back what might start a stop.

Text arrives a token at a time, so a stop sequence can span several pieces.
``StopScanner`` releases text as soon as it cannot be part of a stop
sequence, and cuts the output just before the first one that appears.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopScanner:
    """Scans streamed text for the first of ``stops``; the stop itself is never emitted."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Add ``text``; return what may be emitted now.

        Once a stop sequence is found, ``stopped`` is True, the text before it
        is returned, and everything after it is dropped.
        """
        if self.stopped:
            return ""
        buffer = self._held + text
        cut = min((i for i in (buffer.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._held = ""
            return buffer[:cut]
        keep = self._partial_stop_length(buffer)
        self._held = buffer[len(buffer) - keep :]
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        """The text still held back, at the end of the stream (no stop sequence completed)."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _partial_stop_length(self, buffer: str) -> int:
        """The length of the longest end of ``buffer`` that begins some stop sequence."""
        longest = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(buffer)), longest, -1):
                if buffer.endswith(stop[:n]):
                    longest = n
                    break
        return longest
