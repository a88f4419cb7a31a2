"""StopScanner: stop sequences across streamed pieces."""

from __future__ import annotations

import pytest

from aion.executor.generation import stop_sequences


def scan(stops: list[str], pieces: list[str]) -> tuple[str, bool]:
    scanner = stop_sequences.StopScanner(stops)
    out = "".join(scanner.feed(p) for p in pieces)
    return out + scanner.flush(), scanner.stopped


def test_text_without_stops_passes_through() -> None:
    assert scan([], ["Hello", ", ", "world"]) == ("Hello, world", False)


def test_the_stop_and_what_follows_are_dropped() -> None:
    assert scan(["\n\n"], ["one", "\n", "\nTwo", " three"]) == ("one", True)


def test_a_stop_split_across_pieces_is_found() -> None:
    assert scan(["END"], ["abc E", "N", "D more"]) == ("abc ", True)


def test_the_earliest_stop_wins() -> None:
    assert scan(["b", "a"], ["xxab"]) == ("xx", True)


def test_a_partial_stop_is_held_back_and_released_when_it_diverges() -> None:
    scanner = stop_sequences.StopScanner(["STOP"])
    assert scanner.feed("go ST") == "go "
    assert scanner.feed("ART") == "START"
    assert not scanner.stopped


def test_held_text_is_flushed_at_the_end() -> None:
    scanner = stop_sequences.StopScanner(["STOP"])
    assert scanner.feed("go STO") == "go "
    assert scanner.flush() == "STO"


@pytest.mark.parametrize("pieces", [["x<|end|>"], ["x<|", "end", "|>"], ["x", "<", "|end|", ">"]])
def test_every_split_stops_in_the_same_place(pieces: list[str]) -> None:
    assert scan(["<|end|>"], pieces) == ("x", True)


def test_nothing_comes_out_after_a_stop() -> None:
    scanner = stop_sequences.StopScanner(["."])
    assert scanner.feed("a.b") == "a"
    assert scanner.feed("more") == ""
    assert scanner.flush() == ""
