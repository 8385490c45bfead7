from __future__ import annotations

from server.engines.stops import StopMatcher


def feed_all(matcher: StopMatcher, deltas: list[str]) -> tuple[str, bool]:
    out = []
    for delta in deltas:
        text, matched = matcher.feed(delta)
        out.append(text)
        if matched:
            return "".join(out), True
    return "".join(out) + matcher.flush(), False


def test_no_stops_passes_text_through() -> None:
    assert feed_all(StopMatcher([]), ["ab", "cd"]) == ("abcd", False)


def test_stop_split_across_deltas_is_never_emitted() -> None:
    matcher = StopMatcher(["END"])
    emitted = []
    for delta in ["hello E", "N", "D tail"]:
        text, matched = matcher.feed(delta)
        emitted.append(text)
        assert "E" not in text or (matched is False and not text.endswith("E"))
    assert "".join(emitted) == "hello "
    assert matcher.matched


def test_earliest_of_several_stops_wins() -> None:
    assert feed_all(StopMatcher(["zz", "b"]), ["a", "bzz"]) == ("a", True)


def test_held_back_text_is_released_at_the_end() -> None:
    assert feed_all(StopMatcher(["STOP"]), ["ST", "O"]) == ("STO", False)
