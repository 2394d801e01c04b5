"""One stream of training batches served to several runs at once (``hydra/launcher=one_pass``): runs that would read
identical batches (same source, seed, budget and batch size) each train in a thread of their own, and the batches
are read from the source once and handed to every run.

The runs' :class:`~saefw.training.module.ActivationDataModule` ask :func:`current` for the thread's
:class:`Member`; outside a one-pass group it is None and nothing changes. A member's batches are exactly the ones
its run would read alone: the first ``init_batches`` (``head``, for the data-dependent init) and then the stream
from its own resume step on. The stream starts once every member has joined (or left), from the smallest resume
step; the fastest member runs at most ``lag`` batches ahead of the slowest, so at most ``lag`` batches are held.
A member that fails (or finishes) leaves, and the others go on without it.

The members' evaluations (periodic and final) take turns (:func:`evaluation_turn`): run at once, six final
evaluations each held its logits and took 20× longer than alone on a 2-core machine (benchmarks/sweep_store.py).
Taking turns cannot deadlock: an evaluation reads the held-out split, never the group's stream, so the member
holding the turn always finishes it; the others train on until they need the turn, or until the stream's ``lag``
holds them. Taking turns also lets the members share what depends only on the held-out split
(:func:`share_held_out`): the first to evaluate computes the states evaluations start from and ce_zero, the others
read them — harvested live, each job had computed its own (~70 s per job at layer 25 on 2 cores). Harvested live,
the held-out activations and the clean forward's summary come from the first job's set-up, before any job trains
(:meth:`saefw.sources.hf.HFActivationSource.setup`)."""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from saefw.sources.base import train_batches_from

_local = threading.local()


def current() -> Member | None:
    """This thread's member of a one-pass group (None outside one)."""
    return getattr(_local, "member", None)


def enter(member: Member | None) -> None:
    """Make ``member`` this thread's (None: leave the group's context)."""
    _local.member = member


@contextmanager
def evaluation_turn():
    """Wait for this member's turn to evaluate and hold it for the block (outside a group: at once). The wait is
    added to the member's ``waited_seconds``, so timings of the evaluation itself stay what it took."""
    member = current()
    if member is None:
        yield
        return
    t0 = time.perf_counter()
    with member.group.evaluating:
        member.waited_seconds += time.perf_counter() - t0
        yield


def share_held_out(source) -> None:
    """In a one-pass group, ``source`` computes its held-out parts once for the group's jobs with the same source
    (:meth:`~saefw.sources.base.ActivationSource.share_held_out`; they evaluate in turn); outside one: nothing."""
    member = current()
    if member is not None:
        source.share_held_out(member.group.held_out)


class SharedBatches:
    """The training batches of one group, read once. Counts what it read: ``batches_read`` (batches pulled from the
    source) and ``streams_opened`` (``train_batches`` calls)."""

    def __init__(self, lag: int = 8):
        self.lag = max(1, int(lag))
        self.cond = threading.Condition()
        self.evaluating = threading.Lock()  # one member evaluates at a time (see the module's docstring)
        self.held_out: dict = {}  # the members' sources' held-out parts (share_held_out)
        self.members: list[Member] = []
        self.head: list[torch.Tensor] = []
        self.batches_read = 0
        self.streams_opened = 0
        self._first = None  # the stream the head was read from (from batch 0)
        self._main = None  # the stream served to the members, from batch ``_produced`` on
        self._source = None
        self._batch_size = None
        self._buffer: dict[int, torch.Tensor] = {}
        self._produced = 0
        self._producing = False

    def member(self, name) -> Member:
        m = Member(self, name)
        self.members.append(m)
        return m

    # --- called with the lock held ---
    def _check(self, source, batch_size: int) -> None:
        if self._source is None:
            self._source, self._batch_size = source, batch_size
        elif batch_size != self._batch_size:
            raise RuntimeError(f"one_pass: a member asked for batches of {batch_size} rows, the group reads "
                               f"{self._batch_size}")

    def _open(self, skip: int) -> Iterator[torch.Tensor]:
        self.streams_opened += 1
        return train_batches_from(self._source, self._batch_size, skip)

    def _pull(self, it) -> torch.Tensor | None:
        """The next batch of ``it``, read without the lock (other members go on training meanwhile)."""
        self._producing = True
        self.cond.release()
        try:
            batch = next(it, None)
        finally:
            self.cond.acquire()
            self._producing = False
            self.cond.notify_all()
        if batch is not None:
            self.batches_read += 1
        return batch

    def _waiting_for_members(self) -> bool:
        return any(m.state == "setup" for m in self.members)

    def _start(self) -> None:
        """Every member has joined or left: open the stream at the smallest resume step."""
        skips = [m.cursor for m in self.members if m.state == "joined"]
        start = min(skips) if skips else 0
        if start <= len(self.head) and self._first is not None:
            # the head is the stream's beginning: go on reading the stream it came from
            self._main, self._first = self._first, None
            self._buffer = dict(enumerate(self.head))
            self._produced = len(self.head)
        else:
            self._first = None
            self._main = self._open(start)
            self._produced = start

    def _low(self) -> int:
        cursors = [m.cursor for m in self.members if m.state == "joined"]
        return min(cursors) if cursors else self._produced

    def _get(self, member: Member, i: int) -> torch.Tensor | None:
        with self.cond:
            member.cursor = i
            self.cond.notify_all()
            while self._waiting_for_members():
                self.cond.wait()
            if self._main is None:
                self._start()
            for k in [k for k in self._buffer if k < self._low()]:
                del self._buffer[k]
            while i >= self._produced:
                if self._producing or self._produced - self._low() >= self.lag:
                    self.cond.wait()
                    continue
                batch = self._pull(self._main)
                if batch is None:
                    return None
                self._buffer[self._produced] = batch
                self._produced += 1
                self.cond.notify_all()
            if i not in self._buffer:  # never: the stream starts at the earliest member and keeps what any needs
                raise RuntimeError(f"one_pass: batch {i} of member {member.name} is no longer held (the group's "
                                   f"stream is at {self._produced})")
            return self._buffer[i]

    def _head(self, source, batch_size: int, n: int) -> list[torch.Tensor]:
        with self.cond:
            self._check(source, batch_size)
            while len(self.head) < n:
                if self._producing:
                    self.cond.wait()
                    continue
                if self._first is None:
                    if self._main is not None or self.head:
                        break  # the stream has moved on (or ran dry): the head stays what it is
                    self._first = self._open(0)
                batch = self._pull(self._first)
                if batch is None:
                    break
                self.head.append(batch)
            return self.head[:n]

    def report(self) -> dict:
        return {"batches_read": self.batches_read, "streams_opened": self.streams_opened,
                "members": {str(m.name): {"state": m.state, "served": m.served,
                                         "waited_for_evaluation_seconds": round(m.waited_seconds, 1)}
                            for m in self.members}}


class Member:
    """One run of a group. ``state``: ``setup`` (building its run), ``joined`` (training on the stream), ``left``
    (finished or failed). ``ready`` is set once it joined or left: the launcher then starts the next member's setup,
    so that the seeded setups (weights init, RNG) happen one at a time, as in separate runs."""

    def __init__(self, group: SharedBatches, name):
        self.group, self.name = group, name
        self.state = "setup"
        self.cursor = 0
        self.served = 0
        self.waited_seconds = 0.0  # for another member's evaluation to end (evaluation_turn)
        self.ready = threading.Event()
        self.closers: list = []  # called with ``failed`` when the job has ended (its W&B run)

    def head(self, source, batch_size: int, n: int) -> list[torch.Tensor]:
        """The first ``n`` training batches (a run's ``peek``)."""
        return [b.clone() for b in self.group._head(source, batch_size, n)]

    def stream(self, source, batch_size: int, skip: int, steps: int) -> Iterator[torch.Tensor]:
        """Join the group: batches ``skip`` .. ``steps`` − 1, each a copy of its own."""
        g = self.group
        with g.cond:
            g._check(source, batch_size)
            if self.state == "setup":
                self.state, self.cursor = "joined", skip
            g.cond.notify_all()
        self.ready.set()
        return self._serve(skip, steps)

    def _serve(self, skip: int, steps: int) -> Iterator[torch.Tensor]:
        try:
            for i in range(skip, steps):
                batch = self.group._get(self, i)
                if batch is None:
                    break
                self.served += 1
                yield batch.clone()  # a member never sees (nor changes) another member's tensor
        finally:
            self.leave()

    def close(self, failed: bool) -> None:
        """The job has ended: close what it keeps open (its W&B run)."""
        while self.closers:
            self.closers.pop()(failed)

    def leave(self) -> None:
        g = self.group
        with g.cond:
            self.state = "left"
            g.cond.notify_all()
        self.ready.set()
