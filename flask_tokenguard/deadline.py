"""A monotonic deadline: one per request, so nothing a request does waits without bound."""

from __future__ import annotations

import time


class Deadline:
    """A point on the monotonic clock; wall-clock jumps do not move it."""

    __slots__ = ("at",)

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    def cap(self, seconds: float) -> float:
        """``seconds``, or what is left of this deadline if that is shorter."""
        return min(seconds, self.remaining())

    def __repr__(self) -> str:
        return f"Deadline(remaining={self.remaining():.3f})"
