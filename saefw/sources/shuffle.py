"""The shuffle buffer between activation chunks (store shards, live harvests) and training batches.

Chunks are added to the buffer; when it is full, a seeded permutation of its rows is drawn and the whole batches
among the first ``n`` permuted rows are served; the rest stay to mix with the next chunks. The generator is
consumed by ``randperm(len(buffer))`` only, so the sequence of permutations depends on the chunk *lengths*, never
on their contents. That makes two things cheap:

* **resuming** (``skip`` batches already trained on): while skipping, the buffer holds row *ids* instead of rows
  and chunks are not read. Shuffling the ids draws exactly the permutations that shuffling the rows would, so at
  the resume point the ids name exactly the rows an unskipped stream would hold; only the chunks that still have
  rows waiting are read then (a few, whatever the skipped length).
* **data parallelism** (``part=(rank, world)``): every rank draws the same permutations and serves rows
  ``[rank·B/world, (rank+1)·B/world)`` of every global batch of ``B`` rows, gathering only those rows. The ranks
  together see each global batch exactly once, as a one-process run would.

The rows live in one fixed block, refilled in place (chunks copied in; the rows kept after a serve gathered into
a scratch block of about half its size, then copied back to its front). A buffer that allocated a new block at
every add and serve left the heap a little more fragmented each time (saefw keeps freed blocks in the process,
:mod:`saefw.app.allocator`), so peak memory crept up with the number of chunks read; with the blocks reused it
depends on the buffer's size only. ``capacity`` (the buffer's fill threshold) sizes the block at the first add, so
filling it never holds an old and a new block at once: at the default 131,072 rows of d 576 the block is 377 MB
and the scratch 190 MB, where two swapped full blocks and the fill's regrowth took 754 MB and more.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Chunk:
    """``n`` rows that ``load()`` returns as a float tensor [n, d] (a store shard, a live harvest)."""

    n: int
    load: Callable[[], Tensor]


class ShuffleBuffer:
    """Rows waiting to be served (see the module docstring). ``skip``: global batches to pass over first;
    ``capacity``: the length at which the caller serves (the block then holds it and one more chunk)."""

    def __init__(self, d: int, skip: int = 0, capacity: int = 0):
        self.d, self.skip, self.capacity = d, skip, capacity
        self.rows = torch.empty(0, d)  # a view of the first len(self) rows of self._block
        self._block = torch.empty(0, d)
        self._scratch = torch.empty(0, d)  # where the rows kept after a serve are gathered
        # while skipping: ids of the waiting rows, and the chunks they come from as (first id, chunk)
        self.ids = torch.empty(0, dtype=torch.long)
        self.chunks: list[tuple[int, Chunk]] = []
        self.next_id = 0

    def __len__(self) -> int:
        return len(self.ids) if self.skip else len(self.rows)

    def add(self, chunk: Chunk) -> None:
        if self.skip:
            self.ids = torch.cat([self.ids, torch.arange(self.next_id, self.next_id + chunk.n)])
            self.chunks.append((self.next_id, chunk))
            self.next_id += chunk.n
        else:
            self._append(chunk.load())

    def _append(self, new: Tensor) -> None:
        n, need = len(self.rows), len(self.rows) + len(new)
        if need > len(self._block):  # the first add (or a chunk longer than the first): never again afterwards
            block = torch.empty(max(need, self.capacity + len(new)), self.d)
            block[:n] = self.rows
            self._block = block
        self._block[n:need] = new
        self.rows = self._block[:need]

    def _keep(self, index: Tensor, batch_size: int) -> None:
        """rows ← rows[index], gathered into the scratch block and copied back to the front of the block."""
        k = len(index)
        if len(self._scratch) < k:  # a serve keeps at most half the block and one batch
            self._scratch = torch.empty(max(k, (len(self._block) + 1) // 2 + batch_size), self.d)
        torch.index_select(self.rows, 0, index, out=self._scratch[:k])
        self._block[:k] = self._scratch[:k]
        self.rows = self._block[:k]

    def serve(self, n: int, batch_size: int, generator: torch.Generator,
              part: tuple[int, int] = (0, 1)) -> Iterator[Tensor]:
        """Permute the buffer, serve this rank's part of each whole batch among the first ``n`` rows (minus any
        still to skip), keep the rest."""
        perm = torch.randperm(len(self), generator=generator)
        n_batches = n // batch_size
        end = n_batches * batch_size
        first = 0
        if self.skip:
            if self.skip >= n_batches:  # the whole serve was trained on already: no chunk is read
                self.skip -= n_batches
                self.ids = self.ids[perm[end:]]
                if self.skip:
                    self._forget_unused_chunks()
                else:  # resuming right after this serve: the rows waiting are needed from here on
                    self._append(self._materialise())
                return
            first, self.skip = self.skip, 0
            self.ids = self.ids[perm]  # the rows in served order (as ``rows[perm]`` below would have them)
            self._append(self._materialise())
            perm = torch.arange(len(perm))
        rank, world = part
        share = batch_size // world
        for j in range(first, n_batches):
            start = j * batch_size + rank * share
            yield self.rows[perm[start: start + share]]
        self._keep(perm[end:], batch_size)

    def _forget_unused_chunks(self) -> None:
        if not self.chunks:
            return
        starts = torch.tensor([s for s, _ in self.chunks])
        used = set(torch.bucketize(self.ids, starts, right=True).sub_(1).unique().tolist())
        self.chunks = [c for i, c in enumerate(self.chunks) if i in used]

    def _materialise(self) -> Tensor:
        """The rows named by ``ids``, reading each chunk that still has rows waiting (once)."""
        rows = torch.empty(len(self.ids), self.d)
        for start, chunk in self.chunks:
            mask = (self.ids >= start) & (self.ids < start + chunk.n)
            if mask.any():
                rows[mask] = chunk.load()[self.ids[mask] - start]
        self.ids, self.chunks = torch.empty(0, dtype=torch.long), []
        return rows
