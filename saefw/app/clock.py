"""A command's wall clock and the phases its time goes to."""
from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class WallClock:
    """Where a run's wall time counts from: ``since`` (epoch seconds) and what that instant was, ``origin``:
    ``process`` (the process start: a single run from the command line, interpreter start-up and imports
    included), ``job`` (the start of a multirun job) or ``call`` (the library call, e.g. :func:`saefw.training.run.run`
    called from Python)."""

    since: float
    origin: str

    @classmethod
    def now(cls, origin: str = "call") -> WallClock:
        return cls(time.time(), origin)

    def seconds(self) -> float:
        return time.time() - self.since


class PhaseTimer:
    """Wall-clock seconds per phase of a run (``with timer("train"): ...``), recorded in metrics.json as ``timings``
    so a user sees where a run's time went: startup (from the clock's start to the first phase), model_load,
    data_setup, harvest, init, train, periodic_evaluate, evaluate, save. Together they make up the run's
    ``wall_seconds``. ``announce`` (e.g. ``print``) is given one line per finished phase."""

    def __init__(self, clock: WallClock | None = None, announce: Callable[[str], None] | None = None):
        clock = clock or WallClock.now()
        self._origin = time.perf_counter() - clock.seconds()  # the clock's start on the perf_counter scale
        self._announce = announce
        self.seconds: dict[str, float] = {}
        self._current: str | None = None
        self._charged = 0.0  # seconds of the running phase already counted under another name
        self._notes: list[str] = []  # what was charged elsewhere during the running phase

    @contextmanager
    def __call__(self, name: str, parts: Callable[[], dict[str, float]] | None = None, announce: bool = True):
        """Time phase ``name`` (again: its seconds add up); ``parts`` (called when it ends) names seconds of it that
        are phases of their own (e.g. the harvest inside data setup), split out with :meth:`split`;
        ``announce=False``: no line for this part of the phase (a later part's line gives the total)."""
        t0 = time.perf_counter()
        if not self.seconds:
            self._add("startup", t0 - self._origin)
            self._say("startup", self.seconds["startup"])
        outer = self._current, self._charged, self._notes
        self._current, self._charged, self._notes = name, 0.0, []
        ok = False
        try:
            yield
            ok = True
        finally:
            self._add(name, time.perf_counter() - t0 - self._charged)
            notes = self._notes
            for part, seconds in (parts() if parts else {}).items():
                moved = self.split(name, part, seconds)
                notes.append(f"{part} {moved:.1f} s")
            self._current, self._charged, self._notes = outer
            if ok and announce:
                self._say(name, self.seconds[name], notes)

    def _add(self, name: str, seconds: float) -> None:
        self.seconds[name] = round(self.seconds.get(name, 0.0) + seconds, 2)

    def _say(self, name: str, seconds: float, notes: list[str] | tuple = ()) -> None:
        if self._announce is not None:
            self._announce(f"{name:<10} {seconds:7.1f} s" + (f"  ({', '.join(notes)})" if notes else ""))

    def charge(self, part: str, seconds: float) -> None:
        """Count ``seconds`` of the running phase as ``part`` instead (a model loaded lazily while harvesting or
        evaluating is model_load time, whichever phase needed it first)."""
        self._add(part, seconds)
        if self._current is not None:
            self._charged += seconds
            self._notes.append(f"+{part} {seconds:.1f} s")

    def split(self, whole: str, part: str, seconds: float) -> float:
        """Move ``seconds`` of phase ``whole`` into its own phase ``part`` (e.g. harvesting inside data setup);
        returns the seconds moved."""
        seconds = round(min(max(seconds, 0.0), self.seconds.get(whole, 0.0)), 2)
        self.seconds[part] = round(self.seconds.get(part, 0.0) + seconds, 2)
        self.seconds[whole] = round(self.seconds.get(whole, 0.0) - seconds, 2)
        return seconds
