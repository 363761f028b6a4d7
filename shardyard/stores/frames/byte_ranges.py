"""Byte ranges of encoded chunks and their in-kernel copy into a file (`copy_file_range`).

A reader worker leaves encoded frames in a spill file and sends only `(offset, length)` back; the writer appends
them to a shard file with `write_pieces`, which turns each run of adjacent `ChunkRef`s into one kernel copy and
each run of in-memory bytes into one `pwritev`, so frame bytes never pass through Python memory or a pipe.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence, Union

__all__ = ["ChunkRef", "Piece", "copy_range", "piece_len", "write_pieces"]


@dataclass(frozen=True)
class ChunkRef:
    """The bytes of one encoded chunk, `length` at `offset` of an open file descriptor `fd` (a reader
    worker's spill file): appended by an in-kernel copy, never through Python memory."""

    fd: int
    offset: int
    length: int


Piece = Union[bytes, ChunkRef]


def piece_len(p: Piece) -> int:
    """Bytes in one piece (a `ChunkRef`'s length or the bytes' length)."""
    return p.length if isinstance(p, ChunkRef) else len(p)


def copy_range(src: int, dst: int, offset: int, length: int, dst_offset: int) -> None:
    """Copy `length` bytes at `offset` of `src` to `dst_offset` of `dst` (`copy_file_range`, with a
    read/write fallback where the kernel or file system cannot)."""
    done = 0
    try:
        while done < length:
            n = os.copy_file_range(src, dst, length - done, offset + done, dst_offset + done)
            if n == 0:
                break
            done += n
    except (AttributeError, OSError):
        pass
    while done < length:
        buf = os.pread(src, min(length - done, 8 << 20), offset + done)
        if not buf:
            raise OSError(f"short read: {length - done} bytes missing at offset {offset + done} of fd {src}")
        os.pwrite(dst, buf, dst_offset + done)
        done += len(buf)


def write_pieces(fd: int, pieces: Sequence[Piece], start: int = 0) -> int:
    """Write `pieces` back to back from offset `start` of `fd`; runs of adjacent refs into one file become
    one copy, runs of bytes one `pwritev`. Returns the bytes written."""
    out = start
    i = 0
    while i < len(pieces):
        p = pieces[i]
        if isinstance(p, ChunkRef):
            j, end = i + 1, p.offset + p.length
            while j < len(pieces) and isinstance(pieces[j], ChunkRef) and pieces[j].fd == p.fd \
                    and pieces[j].offset == end:
                end += pieces[j].length
                j += 1
            copy_range(p.fd, fd, p.offset, end - p.offset, out)
            out += end - p.offset
        else:
            j = i
            while j < len(pieces) and j - i < 1024 and not isinstance(pieces[j], ChunkRef):
                j += 1
            bufs = list(pieces[i:j])
            want = sum(map(len, bufs))
            n = os.pwritev(fd, bufs, out)
            if n != want:  # a short vectored write: finish it piece by piece
                os.pwrite(fd, b"".join(bufs)[n:], out + n)
            out += want
        i = j
    return out - start
