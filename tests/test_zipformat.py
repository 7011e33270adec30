"""The zip records daskimg writes itself (store/zipformat.py) against zipfile and Info-ZIP.

Oracles: :mod:`zipfile` (what zarr's ``ZipStore`` reads with) reading every member and
checking its CRC-32 (``testzip``), zlib's own ``crc32`` of each member's bytes, and
``unzip -t`` (Info-ZIP) where it is installed.
"""

from __future__ import annotations

import shutil
import subprocess
import zipfile
import zlib

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from daskimg.store.zipformat import ZipAppender, crc32


def _write(path, members, at=0):
    with open(path, "wb") as fh:
        if at:
            fh.seek(at)  # a sparse start: the members lie past it
        z = ZipAppender(fh.write, at=at)
        for name, pieces in members:
            z.add(name, pieces)
        z.close()


def _check(path, members):
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None  # every member's CRC-32 checked
        infos = z.infolist()
        assert [i.filename for i in infos] == [name for name, _ in members]
        for info, (name, pieces) in zip(infos, members, strict=True):
            data = b"".join(bytes(memoryview(p).cast("B")) for p in pieces)
            assert info.compress_type == zipfile.ZIP_STORED
            assert info.file_size == info.compress_size == len(data)
            assert zlib.crc32(data) == info.CRC
            assert z.read(name) == data
    if shutil.which("unzip"):
        out = subprocess.run(["unzip", "-tq", str(path)], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr


def test_members_of_many_pieces_read_by_zipfile_and_unzip(tmp_path):
    rng = np.random.default_rng(0)
    members = [
        ("zarr.json", [b'{"zarr_format": 3}']),
        ("images/c/0/0/0/0", [rng.integers(0, 256, 300_001, dtype=np.uint8), b"\x01\x02\x03\x04"]),
        ("empty", []),
        ("labels/c/0", [memoryview(np.arange(10, dtype="<i8")), b"", bytearray(b"x" * 70_000)]),
        ("naïve/ünïcode.json", [b"{}"]),  # a UTF-8 name (flag bit 11)
    ]
    _write(tmp_path / "a.zip", members)
    _check(tmp_path / "a.zip", members)
    with zipfile.ZipFile(tmp_path / "a.zip") as z:
        assert z.getinfo("naïve/ünïcode.json").flag_bits & 0x800
        assert all(i.external_attr >> 16 == 0o100644 for i in z.infolist())


def test_an_empty_zip(tmp_path):
    _write(tmp_path / "e.zip", [])
    with zipfile.ZipFile(tmp_path / "e.zip") as z:
        assert z.infolist() == []


def test_more_members_than_the_short_count_holds(tmp_path):
    # 70,000 entries: the classic end record's 16-bit count overflows, ZIP64's holds them
    members = [(f"k/{i}", [i.to_bytes(4, "little")]) for i in range(70_000)]
    _write(tmp_path / "many.zip", members)
    with zipfile.ZipFile(tmp_path / "many.zip") as z:
        infos = z.infolist()
        assert len(infos) == 70_000
        assert z.read("k/69999") == (69_999).to_bytes(4, "little")
        assert zlib.crc32((12_345).to_bytes(4, "little")) == infos[12_345].CRC
    # daskimg's reader takes it: the end record's 16-bit count (65535) defers to ZIP64's
    # (it was refused as "damaged": the ZIP64 record was looked for in 22 bytes of tail)
    from daskimg.store.bytesource import LocalZip

    assert len(LocalZip(str(tmp_path / "many.zip")).members) == 70_000


@pytest.mark.parametrize("comment", [b"", b"x"])
def test_a_zipfile_of_65536_members_is_read(tmp_path, comment):
    # the oracle: zipfile writes it (ZIP64 end records) and reads every member
    from daskimg.store.bytesource import LocalZip

    path = tmp_path / "z.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for i in range(65_536):
            z.writestr(f"m/{i}", b"")
        z.comment = comment
    assert len(zipfile.ZipFile(path).infolist()) == 65_536
    assert len(LocalZip(str(path)).members) == 65_536


def test_members_past_4_gib(tmp_path):
    # offsets beyond 32 bits (a store larger than 4 GiB), in a sparse file that costs nothing
    at = 5 * 2**30
    members = [("a", [b"first"]), ("b", [np.arange(1000, dtype=np.uint16)])]
    path = tmp_path / "big.zip"
    try:
        _write(path, members, at=at)
    except OSError as e:  # a file system without sparse files
        pytest.skip(f"no sparse 5 GiB file here: {e}")
    with zipfile.ZipFile(path) as z:
        assert z.infolist()[0].header_offset == at
        assert z.testzip() is None
        assert z.read("b") == np.arange(1000, dtype=np.uint16).tobytes()


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(max_size=3000), max_size=6), st.integers(0, 2**32 - 1))
def test_crc32_is_zlibs(pieces, start):
    assert crc32(pieces, start) == zlib.crc32(b"".join(pieces), start)


def _at_residue(data, residue, align=4096):
    """``data`` copied into page-aligned memory, starting at ``residue`` modulo ``align``."""
    import mmap

    m = mmap.mmap(-1, len(data) + 2 * align)
    view = memoryview(m)[residue : residue + len(data)]
    view[:] = data
    return view


@settings(max_examples=20, deadline=None)
@given(
    residues=st.lists(st.integers(0, 4095), min_size=1, max_size=4),
    small=st.integers(0, 9000),
    at=st.integers(0, 9000),
)
@example(residues=[545, 0], small=3485, at=0)  # a second member lined up with no padding
def test_padded_members_line_their_large_piece_up_and_read_as_any_zip(
    tmp_path_factory, residues, small, at
):
    # align=: each member's first large piece (after a small one of any size) lands at a
    # file offset equal to its address modulo 4096; readers skip the padding field
    from daskimg.store.bytesource import zip_members
    from daskimg.store.directio import address

    rng = np.random.default_rng(len(residues) + small)
    members, large = [], []
    for i, r in enumerate(residues):
        big = _at_residue(rng.integers(0, 256, 2**20 + 333 * i, dtype=np.uint8).tobytes(), r)
        members.append((f"images/c/{i}/0", [b"h" * small, big, b"\x01\x02\x03\x04"]))
        large.append(big)
    path = tmp_path_factory.mktemp("z") / "a.zip"
    with open(path, "wb") as fh:
        fh.seek(at)
        z = ZipAppender(fh.write, at=at, align=4096)
        for name, pieces in members:
            z.add(name, pieces)
        z.close()
    _check(path, members)
    with open(path, "rb") as fh:
        size = fh.seek(0, 2)
        found = zip_members(fh, size, lambda rs: [_pread(path, a, b) for a, b in rs], str(path))
    for (name, _), big in zip(members, large, strict=True):
        start = found[name][0] + small  # the large piece's offset in the file
        assert start % 4096 == address(big) % 4096
        head = _pread(path, start - small - 4096 - 64, start - small)
        # zipalign's ID before the data, or no padding: the data right after the member's
        # name and its ZIP64 field (ID 1, 16 bytes), its place lined up as it fell (the
        # exemption was computed from the file's start, right for the first member only)
        unpadded = head[-20:-16] == b"\x01\x00\x10\x00" and head[:-20].endswith(name.encode())
        assert b"\x35\xd9" in head or unpadded


def _pread(path, a, b):
    with open(path, "rb") as fh:
        fh.seek(max(a, 0))
        return fh.read(b - max(a, 0))
