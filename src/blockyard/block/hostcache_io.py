"""Aligned I/O for the host-cache-off layer: planning write-outs, and the blocking
calls that run on I/O threads.

``plan_jobs(extents, align, max_job)`` turns dirty byte extents into *jobs*:
aligned ranges of at most ``max_job`` bytes, each with the data pieces that
fall in it and the aligned block ranges that must be read first because the
pieces do not cover them (read-modify-write of unaligned edges and gaps).
Extents whose aligned ranges touch share a job, so a block is never written
by two jobs at once; jobs are disjoint and may run on several threads in
parallel.

The ``*_sync`` functions run on I/O threads.  They read and write through
the O_DIRECT descriptor with page-aligned pool buffers, except for the last,
partial block of a file whose size is not a multiple of the alignment: O_DIRECT
cannot write a partial block without growing the file, so those bytes go
through the ordinary descriptor (the kernel keeps the two views coherent).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from blockyard.block.layer import Buffer
from blockyard.util.aligned import BufferPool, align_down, align_up


@dataclass
class Job:
    start: int  # aligned
    end: int  # aligned; may pass the end of the file (the tail block)
    pieces: list[tuple[int, memoryview]] = field(default_factory=list)
    reads: list[tuple[int, int]] = field(default_factory=list)  # aligned ranges to read first


def _runs(extents: Iterable[tuple[int, Buffer]], align: int) -> list[list[tuple[int, Buffer]]]:
    runs: list[list[tuple[int, Buffer]]] = []
    run_end = -1
    for offset, data in sorted(extents, key=lambda x: x[0]):
        if not len(data):
            continue
        if runs and align_down(offset, align) <= run_end:
            runs[-1].append((offset, data))
        else:
            runs.append([(offset, data)])
        run_end = max(run_end, align_up(offset + len(data), align))
    return runs


def _gaps_to_reads(job: Job, align: int) -> None:
    pos = job.start
    for offset, data in job.pieces:
        if offset > pos:
            job.reads.append((align_down(pos, align), align_up(offset, align)))
        pos = max(pos, offset + len(data))
    if pos < job.end:
        job.reads.append((align_down(pos, align), job.end))
    merged: list[tuple[int, int]] = []
    for r0, r1 in job.reads:
        if merged and r0 <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], r1))
        else:
            merged.append((r0, r1))
    job.reads = merged


def plan_jobs(extents: Iterable[tuple[int, Buffer]], align: int, max_job: int) -> list[Job]:
    """Aligned, disjoint write jobs covering ``extents`` (see the module docstring)."""
    max_job = max(align, align_down(max_job, align))
    jobs: list[Job] = []
    for run in _runs(extents, align):
        first = align_down(run[0][0], align)
        last = max(align_up(o + len(d), align) for o, d in run)
        for start in range(first, last, max_job):
            job = Job(start, min(start + max_job, last))
            for offset, data in run:
                a, z = max(offset, job.start), min(offset + len(data), job.end)
                if a < z:
                    job.pieces.append((a, memoryview(data)[a - offset:z - offset]))
            if job.pieces:
                _gaps_to_reads(job, align)
                jobs.append(job)
    return jobs


# ---- blocking calls, run on I/O threads ---------------------------------------------------
def read_into(fd: int, out: memoryview, offset: int) -> None:
    """Fill ``out`` from ``offset``; what lies past the end of the file reads as zeroes."""
    done = 0
    while done < len(out):
        with out[done:] as rest:
            n = os.preadv(fd, [rest], offset + done)
        if n == 0:
            out[done:] = bytes(len(out) - done)
            return
        done += n


def write_all(fd: int, data: memoryview, offset: int, dsync: bool) -> None:
    flags = os.RWF_DSYNC if dsync else 0
    done = 0
    while done < len(data):
        with data[done:] as rest:
            done += os.pwritev(fd, [rest], offset + done, flags)


def read_aligned_sync(dfd: int, pool: BufferPool, offset: int, length: int,
                      align: int) -> bytearray:
    """Read [offset, offset + length) with O_DIRECT: aligned read, then copy out."""
    a0, a1 = align_down(offset, align), align_up(offset + length, align)
    buf = pool.get(a1 - a0)
    try:
        with buf.view[:a1 - a0] as view:
            read_into(dfd, view, a0)
            return bytearray(view[offset - a0:offset - a0 + length])
    finally:
        pool.put(buf)


def write_job_sync(dfd: int, bfd: int, size: int, job: Job, pool: BufferPool, align: int,
                   dsync: bool) -> None:
    """Read the job's uncovered blocks, lay its pieces over them, write it out."""
    n = job.end - job.start
    tail = align_down(size, align)  # where the partial last block (if any) starts
    buf = pool.get(n)
    try:
        with buf.view[:n] as view:
            for r0, r1 in job.reads:
                with view[r0 - job.start:r1 - job.start] as part:
                    read_into(dfd, part, r0)
            for offset, data in job.pieces:
                view[offset - job.start:offset - job.start + len(data)] = data
            direct_end = min(job.end, tail)
            if direct_end > job.start:
                with view[:direct_end - job.start] as part:
                    write_all(dfd, part, job.start, dsync)
            tail_start = max(job.start, tail)
            if size > tail_start and job.end > tail_start:
                with view[tail_start - job.start:size - job.start] as part:
                    write_all(bfd, part, tail_start, dsync)
    finally:
        pool.put(buf)
