"""The shuffle buffer: resuming (skipping) and sharding over ranks give exactly the batches of the plain stream,
and skipped chunks are never read."""
import pytest
import torch

from saefw.sources.shuffle import Chunk, ShuffleBuffer


def _stream(chunks, batch_size, buffer_rows, seed=0, skip=0, part=(0, 1), epochs=2, capacity=0, seen=None):
    """The serving loop of the HF source over ``chunks`` (a list of tensors), ``epochs`` times; ``seen`` (a list)
    receives the buffer."""
    g = torch.Generator().manual_seed(seed)
    buf = ShuffleBuffer(chunks[0].shape[1], skip, capacity=capacity)
    if seen is not None:
        seen.append(buf)
    for _ in range(epochs):
        for c in chunks:
            buf.add(Chunk(len(c), lambda c=c: c.clone()))
            if len(buf) >= buffer_rows:
                yield from buf.serve(len(buf) // 2, batch_size, g, part)
        yield from buf.serve(len(buf), batch_size, g, part)


@pytest.fixture(scope="module")
def chunks():
    sizes = [37, 50, 50, 50, 21] + [50] * 35 + [8]  # uneven, like a corpus's last shard
    start = 0
    out = []
    for n in sizes:  # row i holds the number i: the served order is readable
        out.append(torch.arange(start, start + n, dtype=torch.float32)[:, None].repeat(1, 3))
        start += n
    return out


def test_plain_stream_serves_every_row_once_per_epoch(chunks):
    served = torch.cat(list(_stream(chunks, 16, 120, epochs=1)))[:, 0]
    total = sum(len(c) for c in chunks)
    assert len(served) == total // 16 * 16 and len(set(served.tolist())) == len(served)
    assert not torch.equal(served, torch.sort(served).values)  # shuffled


@pytest.mark.parametrize("skip", [1, 5, 9, 13, 20, 27, 64, 121])
def test_skipping_gives_the_rest_of_the_same_stream(chunks, skip):
    full = list(_stream(chunks, 16, 120))
    resumed = list(_stream(chunks, 16, 120, skip=skip))
    assert len(resumed) == len(full) - skip
    assert all(torch.equal(a, b) for a, b in zip(resumed, full[skip:]))


def test_skipped_chunks_are_not_read(chunks):
    skip = 100  # of 122
    reads = []
    g = torch.Generator().manual_seed(0)
    buf = ShuffleBuffer(3, skip=skip)
    served = []
    for i, c in enumerate(chunks):
        buf.add(Chunk(len(c), lambda c=c, i=i: reads.append(i) or c.clone()))
        if len(buf) >= 120:
            served += list(buf.serve(len(buf) // 2, 16, g))
    served += list(buf.serve(len(buf), 16, g))
    full = list(_stream(chunks, 16, 120, epochs=1))
    assert len(served) == len(full) - skip and all(torch.equal(a, b) for a, b in zip(served, full[skip:]))
    assert len(reads) == len(set(reads))  # every chunk read at most once
    starts = torch.tensor([0] + [sum(len(c) for c in chunks[:k]) for k in range(1, len(chunks))])

    def chunk_of(rows):
        return set((torch.bucketize(rows[:, 0].long(), starts, right=True) - 1).tolist())

    needed = chunk_of(torch.cat(served))
    never_served = torch.tensor(sorted(set(range(int(starts[-1]) + len(chunks[-1]))) -
                                       set(torch.cat(full)[:, 0].long().tolist())), dtype=torch.float32)
    # read: the chunks with rows still to serve, and at most those whose rows the epoch leaves over at its end
    assert needed <= set(reads) <= needed | chunk_of(never_served[:, None])
    assert len(reads) < len(chunks) / 2  # the chunks all of whose rows were served before are never read


@pytest.mark.parametrize("skip", [0, 7])
def test_ranks_get_disjoint_parts_that_make_up_each_global_batch(chunks, skip):
    full = list(_stream(chunks, 16, 120, skip=skip))
    parts = [list(_stream(chunks, 16, 120, skip=skip, part=(r, 4))) for r in range(4)]
    assert all(len(p) == len(full) for p in parts)
    for j, whole in enumerate(full):
        assert torch.equal(torch.cat([p[j] for p in parts]), whole)
        assert all(len(p[j]) == 4 for p in parts)


def test_capacity_sizes_the_block_once_and_changes_no_batch():
    chunks = [torch.arange(i * 50, (i + 1) * 50, dtype=torch.float32)[:, None].repeat(1, 3) for i in range(30)]
    plain = torch.cat(list(_stream(chunks, 16, 120)))
    seen, blocks, scratches = [], set(), set()
    sized = []
    for batch in _stream(chunks, 16, 120, capacity=120, seen=seen):
        sized.append(batch)
        blocks.add(seen[0]._block.data_ptr())
        scratches.add(seen[0]._scratch.data_ptr())
    assert torch.equal(torch.cat(sized), plain)
    buf = seen[0]
    # the fill threshold plus one chunk, allocated at the first add and never again; the scratch: half and a batch
    assert len(buf._block) == 120 + 50 and len(blocks) == 1
    assert len(buf._scratch) == 85 + 16 and len(scratches - {torch.empty(0).data_ptr()}) <= 1
