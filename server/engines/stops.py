"""Stop strings over a stream of text deltas.

Text that could still be the start of a stop string is held back until it cannot, so a client
never sees the beginning of a stop sequence that the server then cuts off.
"""

from __future__ import annotations


class StopMatcher:
    def __init__(self, stops: list[str]) -> None:
        self.stops = [stop for stop in stops if stop]
        self._hold = max((len(stop) for stop in self.stops), default=1) - 1
        self._pending = ""
        self.matched = False

    def feed(self, text: str) -> tuple[str, bool]:
        """Add a delta; return (text safe to emit now, whether a stop string was found)."""
        if self.matched:
            return "", True
        if not self.stops:
            return text, False
        self._pending += text
        cut = min((index for index in (self._pending.find(stop) for stop in self.stops) if index >= 0), default=-1)
        if cut >= 0:
            self.matched = True
            safe, self._pending = self._pending[:cut], ""
            return safe, True
        if self._hold == 0:
            safe, self._pending = self._pending, ""
            return safe, False
        safe, self._pending = self._pending[: -self._hold], self._pending[-self._hold :]
        return safe, False

    def flush(self, text: str = "") -> str:
        """End of stream: whatever is held back (plus a last delta) is not a stop string after all."""
        if self.matched:
            return ""
        safe, _ = self.feed(text)
        rest, self._pending = self._pending, ""
        return safe + rest
