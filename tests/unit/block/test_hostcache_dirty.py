"""The write-back cache's pieces, pure: DirtyMap against a model, and write-out planning."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from blockyard.block.hostcache_dirty import DirtyMap
from blockyard.block.hostcache_io import plan_jobs

SIZE = 1 << 14
A = 4096

ops = st.lists(st.one_of(
    st.tuples(st.just("insert"), st.integers(0, SIZE - 1), st.integers(1, 6000)),
    st.tuples(st.just("discard"), st.integers(0, SIZE - 1), st.integers(0, 6000)),
), max_size=40)


def apply(ops_list: list[tuple[str, int, int]]) -> tuple[DirtyMap, bytearray, bytearray]:
    """Run ops on a DirtyMap and on a model (bytes + a dirty mask)."""
    dm = DirtyMap()
    data, mask = bytearray(SIZE), bytearray(SIZE)
    for i, (op, off, n) in enumerate(ops_list):
        n = min(n, SIZE - off)
        if op == "insert":
            payload = bytes([(i * 7 + k) % 251 + 1 for k in range(n)])
            dm.insert(off, payload)
            data[off:off + n] = payload
            mask[off:off + n] = b"\x01" * n
        else:
            dm.discard(off, n)
            mask[off:off + n] = bytes(n)
    return dm, data, mask


@settings(max_examples=200, deadline=None)
@given(ops)
def test_dirty_map_matches_a_model(ops_list: list[tuple[str, int, int]]) -> None:
    dm, data, mask = apply(ops_list)
    out = bytearray(SIZE)
    dm.overlay(0, out)
    expect = bytes(d if m else 0 for d, m in zip(data, mask, strict=True))
    assert out == expect
    assert dm.nbytes == sum(mask)
    prev_end = -1
    for start, buf in dm.extents():  # sorted, disjoint, never touching
        assert start > prev_end and len(buf) > 0
        prev_end = start + len(buf)
    for off in range(0, SIZE, 397):
        assert dm.overlaps(off, 1000) == any(mask[off:off + 1000])


def test_sequential_writes_coalesce_into_one_extent() -> None:
    dm = DirtyMap()
    for i in range(100):
        dm.insert(i * 512, bytes([i]) * 512)
    assert len(dm) == 1 and dm.nbytes == 51200
    dm.insert(51200 + 1, b"x")  # a gap of one byte: a second extent
    assert len(dm) == 2
    dm.insert(51200, b"y")  # fills the gap and bridges both
    assert len(dm) == 1


def test_partial_overlay() -> None:
    dm = DirtyMap()
    dm.insert(100, b"abcdef")
    out = bytearray(b"......")
    dm.overlay(102, out)
    assert out == b"cdef.."


@settings(max_examples=200, deadline=None)
@given(ops, st.sampled_from([A, 2 * A, 3 * A, 8 * A]))
def test_jobs_cover_every_dirty_byte_once_on_aligned_disjoint_ranges(
        ops_list: list[tuple[str, int, int]], max_job: int) -> None:
    dm, data, mask = apply(ops_list)
    jobs = plan_jobs(list(dm.extents()), A, max_job)
    written = bytearray(SIZE)
    seen = bytearray(SIZE)
    prev_end = -1
    for job in jobs:
        assert job.start % A == 0 and job.end % A == 0 and job.start < job.end
        assert job.end - job.start <= max_job
        assert job.start >= prev_end  # disjoint, in order
        prev_end = job.end
        covered = bytearray(job.end - job.start)
        for off, piece in job.pieces:
            assert job.start <= off and off + len(piece) <= job.end
            written[off:off + len(piece)] = piece
            seen[off:off + len(piece)] = b"\x01" * len(piece)
            covered[off - job.start:off - job.start + len(piece)] = b"\x01" * len(piece)
        for r0, r1 in job.reads:
            assert r0 % A == 0 and r1 % A == 0 and job.start <= r0 < r1 <= job.end
            covered[r0 - job.start:r1 - job.start] = b"\x01" * (r1 - r0)
        assert all(covered), "a block would be written with bytes neither read nor dirty"
    assert seen == mask
    assert bytes(w if m else 0 for w, m in zip(written, mask, strict=True)) == \
        bytes(d if m else 0 for d, m in zip(data, mask, strict=True))


def test_aligned_writes_need_no_reads() -> None:
    jobs = plan_jobs([(0, bytes(2 * A)), (2 * A, bytes(A))], A, 1 << 20)
    assert len(jobs) == 1 and jobs[0].reads == [] and (jobs[0].start, jobs[0].end) == (0, 3 * A)


def test_unaligned_edges_are_read_first() -> None:
    jobs = plan_jobs([(100, bytes(A))], A, 1 << 20)
    assert [(j.start, j.end, j.reads) for j in jobs] == [(0, 2 * A, [(0, 2 * A)])]
