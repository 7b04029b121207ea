"""Host liveness: the launcher's beat to every agent, and which host has been silent too long.

Every ``interval`` seconds the launcher sends each agent a ``beat`` (the agent stops its processes
when the launcher falls silent); each agent beats back. A host from which nothing has been heard
or read for ``interval x count`` seconds is lost: the host or the network to it is down. Bytes
read count as heard even when the launcher's loop has not handled them yet (a busy launcher's
backlog is no silence). Pure: the clock is passed in.
"""
from __future__ import annotations

import time
from typing import Callable, Optional


class Keepalive:
    """When the next beat is due, and how long past the limit a host has been silent."""

    def __init__(self, interval: float, count: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.limit = interval * count  # seconds of silence after which a host is lost
        self.clock = clock
        self._beat_sent_at = float("-inf")

    @property
    def enabled(self) -> bool:
        return self.interval > 0

    def beat_due(self) -> bool:
        """Whether a beat is to be sent now (if so, it counts as sent)."""
        if not self.enabled:
            return False
        now = self.clock()
        if now - self._beat_sent_at < self.interval:
            return False
        self._beat_sent_at = now
        return True

    def silent_for(self, heard_at: Optional[float], read_at: float = float("-inf")) -> Optional[float]:
        """Seconds a host has been silent if that is past the limit, else None (also before its first word)."""
        if not self.enabled or heard_at is None:
            return None
        silent = self.clock() - max(heard_at, read_at)
        return silent if silent > self.limit else None
