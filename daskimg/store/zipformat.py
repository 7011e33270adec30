"""Store: the records of a stored (uncompressed) zip written front to back, CRC-32 by ISA-L.

:class:`ZipAppender` writes what :mod:`zipfile` writes for ``ZIP_STORED`` members with
``force_zip64=True``: a local header (ZIP64 sizes), the member's bytes, and at the end
the central directory and the end records, ZIP64 where a size, an offset or the count
needs it (PKWARE APPNOTE 6.3, sections 4.3 and 4.5.3). Readers see a plain zip: :mod:`zipfile` (and so zarr's ``ZipStore``), Info-ZIP's
``unzip``, daskimg's own reader; the tests check each member's CRC with all three.

Why not :mod:`zipfile` itself: it computes every member's CRC-32 with zlib's ``crc32``
as the bytes go by (5 GB/s here), with no way to hand it a CRC computed otherwise. That
was the largest cost left in the process that assembles an ingest's zip: 0.3 s of CPU
per 4,000 photos (0.07 ms an image, against ~1.3 ms to decode and resize one), taken
from the two cores the decoding workers share. ISA-L's CRC-32 (``isal``, the same CRC,
with carry-less multiplication) runs at ~24 GB/s here. A member's CRC is computed before
its header is written, so no data descriptor follows the data (the file is written once,
front to back, and never sought).

With ``align`` (a file written past the page cache, :class:`~daskimg.store.directio.AppendFile`),
a member whose data holds a large piece gets a padding field in its local header (after
the ZIP64 field; ID ``0xD935``, as Android's ``zipalign`` writes it: the alignment, then
zeros) so that piece's place in the file and its address are equal modulo ``align``: the
file then writes it from its own memory. Readers skip a local header's extra field by its
length, as they skip the ZIP64 field (zipfile, ``unzip``, daskimg's reader).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from isal import isal_zlib

from .directio import IN_PLACE_FROM, address

__all__ = ["ZipAppender", "crc32"]

_LOCAL = struct.Struct("<4s5H3I2H")  # 30 bytes, APPNOTE 4.3.7
_LOCAL_ZIP64 = struct.Struct("<2H2Q")  # the ZIP64 extra field with both sizes (4.5.3)
_CENTRAL = struct.Struct("<4s4B4H3I5HII")  # 46 bytes, 4.3.12
_END64 = struct.Struct("<4sQ2H2I4Q")  # 56 bytes, 4.3.14
_END64_LOCATOR = struct.Struct("<4sIQI")  # 20 bytes, 4.3.15
_END = struct.Struct("<4s4H2IH")  # 22 bytes, 4.3.16

_VERSION = 45  # 4.5: ZIP64
_UNIX = 3  # "made by" system: external attributes hold Unix permissions
_UTF8 = 0x800  # general purpose bit 11: the name is UTF-8
_FULL = 0xFFFFFFFF  # "see the ZIP64 extra field"
_ZIP64_LIMIT = 2**31 - 1  # zipfile's: beyond it, ZIP64 fields
_ATTRS = 0o100644 << 16  # a regular file, rw-r--r--
_PADDING = 0xD935  # zipalign's extra field: a u16 alignment, then zeros


def crc32(pieces: Sequence[Any], value: int = 0) -> int:
    """The zip CRC-32 of ``pieces`` (buffers) one after another."""
    for p in pieces:
        value = isal_zlib.crc32(p, value)
    return value


class _Entry(NamedTuple):
    name: bytes
    flags: int
    dos_time: int
    dos_date: int
    crc: int
    size: int
    offset: int


class ZipAppender:
    """A zip written into ``write`` (a file's ``write``, front to back; ``at``: the bytes
    already before it): :meth:`add` each member, then :meth:`close` for the directory."""

    def __init__(self, write: Callable[[Any], Any], at: int = 0, *, align: int = 0) -> None:
        self._write = write
        self._at = at
        self._align = align
        self._entries: list[_Entry] = []
        self.closed = False

    def add(self, name: str, pieces: Sequence[Any]) -> None:
        """Append the member ``name`` made of ``pieces`` (buffers, written in order)."""
        if self.closed:
            raise ValueError(f"zip member {name!r} added after the central directory")
        views = [memoryview(p).cast("B") for p in pieces]
        size = sum(v.nbytes for v in views)
        raw = name.encode("utf-8")
        flags = 0 if raw.isascii() else _UTF8
        t = time.localtime()
        dos_time = t.tm_hour << 11 | t.tm_min << 5 | t.tm_sec // 2
        dos_date = max(t.tm_year - 1980, 0) << 9 | t.tm_mon << 5 | t.tm_mday
        entry = _Entry(raw, flags, dos_time, dos_date, crc32(views), size, self._at)
        extra = _LOCAL_ZIP64.pack(1, 16, size, size)
        extra += self._padding(views, _LOCAL.size + len(raw) + len(extra))
        # fmt: off
        head = _LOCAL.pack(
            b"PK\x03\x04", _VERSION, flags, 0, dos_time, dos_date, entry.crc, _FULL, _FULL,
            len(raw), len(extra),
        )
        # fmt: on
        self._put(head + raw + extra)
        for v in views:
            self._put(v)
        self._entries.append(entry)

    def _padding(self, views: Sequence[memoryview], head: int) -> bytes:
        """The padding field that puts the member's first large piece at a file offset equal
        to its address modulo the alignment (``b""``: none needed, or no such piece)."""
        if not self._align:
            return b""
        offset = 0  # of the piece in the member's data
        for v in views:
            if v.nbytes >= IN_PLACE_FROM:
                break
            offset += v.nbytes
        else:
            return b""
        pad = (address(v) - offset - self._at - head) % self._align
        if pad == 0:
            return b""
        if pad < 6:  # the field's ID, length and alignment take 6 bytes
            pad += self._align
        return struct.pack("<3H", _PADDING, pad - 4, self._align) + bytes(pad - 6)

    def close(self) -> None:
        """Write the central directory and the end records (once). As :mod:`zipfile` does,
        an entry carries a ZIP64 field only for a size or an offset beyond 2**31 - 1, and
        the ZIP64 end records are written only for more than 65,535 members or a directory
        beyond that: a store of any size otherwise reads as the zips written before."""
        if self.closed:
            return
        self.closed = True
        start = self._at
        for e in self._entries:
            big = e.size > _ZIP64_LIMIT
            far = e.offset > _ZIP64_LIMIT
            extra = [e.size, e.size] if big else []
            extra += [e.offset] if far else []
            field = struct.pack(f"<2H{len(extra)}Q", 1, 8 * len(extra), *extra) if extra else b""
            size = _FULL if big else e.size
            # fmt: off
            head = _CENTRAL.pack(
                b"PK\x01\x02", _VERSION, _UNIX, _VERSION, 0, e.flags, 0, e.dos_time, e.dos_date,
                e.crc, size, size, len(e.name), len(field), 0, 0, 0, _ATTRS,
                _FULL if far else e.offset,
            )
            # fmt: on
            self._put(head + e.name + field)
        end64 = self._at
        n, size = len(self._entries), end64 - start
        if n > 0xFFFF or start > _ZIP64_LIMIT or size > _ZIP64_LIMIT:
            # fmt: off
            self._put(
                _END64.pack(b"PK\x06\x06", _END64.size - 12, _VERSION, _VERSION, 0, 0, n, n,
                            size, start)
                + _END64_LOCATOR.pack(b"PK\x06\x07", 0, end64, 1)
            )
            # fmt: on
        short, small, at = min(n, 0xFFFF), min(size, _FULL), min(start, _FULL)
        self._put(_END.pack(b"PK\x05\x06", 0, 0, short, short, small, at, 0))

    def _put(self, data: Any) -> None:
        self._write(data)
        self._at += memoryview(data).nbytes
