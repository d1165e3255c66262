"""A boot clock for tests: it moves only when the test moves it, so nothing
depends on how long the machine has been up."""

from __future__ import annotations


class ManualClock:
    def __init__(self, now_ns: int = 0) -> None:
        self.now_ns = now_ns

    def __call__(self) -> int:
        return self.now_ns

    def advance(self, ns: int) -> None:
        self.now_ns += ns
