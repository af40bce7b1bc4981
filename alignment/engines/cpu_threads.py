"""How many threads llama.cpp may decode with right now, on a CPU shared with torch and other processes.

llama.cpp's threads meet at a barrier after every operation: on all cores of an idle machine that is the
fastest setting, but when another process (or torch in this process) holds one of the cores, every barrier
waits for a descheduled thread and decoding collapses (2 threads: 2.9 tokens/s vs 52 with 1, measured in
issue 11). So the count follows the machine: a daemon thread samples /proc/stat every ``interval`` seconds
and subtracts this process's own CPU time; all cores when the others leave them free, else one thread fewer
per busy core (at least one). Work of this process that runs beside llama.cpp (the assistant's background
preference inference on torch) says so with ``in_process_work(cores)``: those cores count as busy too.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

#: cores of other work above which llama.cpp leaves one core to it
BUSY_THRESHOLD = 0.35


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _system_busy_s() -> tuple[float, float] | None:
    """(busy seconds, total seconds) summed over all CPUs since boot, or None off Linux."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    return (total - idle) / hz, total / hz


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


class ContentionMonitor:
    """Cores kept busy by work other than this process, as a moving average (0 off Linux)."""

    def __init__(self, interval: float = 0.25, smoothing: float = 0.5) -> None:
        self.interval, self.smoothing = interval, smoothing
        self.others = 0.0
        self._last = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> ContentionMonitor:
        """Begin sampling; the first call measures one short window first, so its answer is already real."""
        with self._lock:
            if self._thread is None and _system_busy_s() is not None:
                self._sample()
                time.sleep(0.1)
                self._sample()
                self.others = self.others / (1 - self.smoothing)  # no history to average with yet
                self._thread = threading.Thread(target=self._loop, name="cpu-contention", daemon=True)
                self._thread.start()
        return self

    def _sample(self) -> None:
        now = _system_busy_s()
        own = _own_cpu_s()
        wall = time.monotonic()
        if now is None:
            return
        if self._last is not None:
            busy0, _total0, own0, wall0 = self._last
            elapsed = max(wall - wall0, 1e-3)
            others = max(0.0, (now[0] - busy0) - (own - own0)) / elapsed
            self.others = self.smoothing * self.others + (1 - self.smoothing) * others
        self._last = (now[0], now[1], own, wall)

    def _loop(self) -> None:
        while True:
            time.sleep(self.interval)
            self._sample()


_monitor = ContentionMonitor()
_reserved = [0]
_reserved_lock = threading.Lock()


@contextmanager
def in_process_work(cores: int = 1) -> Iterator[None]:
    """Mark ``cores`` as busy with this process's own other work (e.g. torch) while the block runs."""
    with _reserved_lock:
        _reserved[0] += cores
    try:
        yield
    finally:
        with _reserved_lock:
            _reserved[0] -= cores


def contention() -> float:
    """Cores busy with other processes' work right now (a moving average over about a second)."""
    return _monitor.start().others


def pick_threads(cores: int | None = None) -> int:
    """All usable cores when the others leave them free, else one fewer per busy core (at least one)."""
    cores = cores or usable_cores()
    busy = contention() + _reserved[0]
    if busy < BUSY_THRESHOLD:
        return cores
    return max(1, cores - max(1, round(busy)))
