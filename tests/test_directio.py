"""store/directio.py: a file written front to back past the page cache holds exactly the
bytes it was given, whatever the file system does with ``O_DIRECT``.

Oracles: the concatenated pieces read back with plain ``open``; :mod:`zipfile`'s own CRC
check (``testzip``) and reading of a zip written through it.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daskimg.store import directio
from daskimg.store.directio import AppendFile, write_whole

MiB = 2**20


def _pieces(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, n, dtype=np.uint8) for n in sizes]


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(
        st.one_of(st.integers(0, 5000), st.integers(3 * MiB, 9 * MiB)), min_size=0, max_size=6
    ),
    seed=st.integers(0, 2**16),
)
def test_the_file_holds_exactly_what_was_written(tmp_path_factory, sizes, seed):
    # pieces of any size, crossing the 8 MiB buffer and 4 KiB blocks anywhere
    path = tmp_path_factory.mktemp("d") / "f.bin"
    pieces = _pieces(sizes, seed)
    with AppendFile(path) as fh:
        for i, p in enumerate(pieces):
            assert fh.write(p if i % 2 else p.tobytes()) == p.nbytes
        assert fh.tell() == sum(sizes)
    assert path.read_bytes() == b"".join(p.tobytes() for p in pieces)


def test_direct_io_is_used_where_the_file_system_takes_it(tmp_path):
    if not hasattr(os, "O_DIRECT"):
        pytest.skip("no O_DIRECT on this platform")
    with AppendFile(tmp_path / "f.bin") as fh:
        # ext4, xfs, btrfs take it; a file system that refuses it is written through the
        # page cache (the next tests), so this only says which one the test machine took
        flags = __import__("fcntl").fcntl(fh.fileno(), __import__("fcntl").F_GETFL)
        assert bool(flags & os.O_DIRECT) == fh.direct
        fh.write(b"x" * (9 * MiB))


def test_a_file_system_refusing_o_direct_at_open_gets_the_same_bytes(tmp_path, monkeypatch):
    real_open = os.open

    def refusing_open(path, flags, *args):
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument", path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(directio.os, "open", refusing_open)
    pieces = _pieces([5 * MiB, 123, 7 * MiB + 5], seed=1)
    with AppendFile(tmp_path / "f.bin") as fh:
        assert not fh.direct
        for p in pieces:
            fh.write(p)
    assert (tmp_path / "f.bin").read_bytes() == b"".join(p.tobytes() for p in pieces)


@pytest.mark.parametrize("how", ["refused", "short"])
def test_a_direct_write_that_fails_falls_back_without_losing_bytes(tmp_path, monkeypatch, how):
    if not hasattr(os, "O_DIRECT"):
        pytest.skip("no O_DIRECT on this platform")
    real_write = os.write
    calls = []

    def flaky_write(fd, data):
        direct = __import__("fcntl").fcntl(fd, __import__("fcntl").F_GETFL) & os.O_DIRECT
        if direct and not calls:
            calls.append(1)
            if how == "refused":
                raise OSError(errno.EINVAL, "Invalid argument")
            return real_write(fd, memoryview(data)[:8192])  # a short, aligned write
        return real_write(fd, data)

    monkeypatch.setattr(directio.os, "write", flaky_write)
    pieces = _pieces([3 * MiB, 6 * MiB + 17, 4 * MiB, 11], seed=2)
    with AppendFile(tmp_path / "f.bin") as fh:
        if not fh.direct:
            pytest.skip("this file system refuses O_DIRECT at open (tested above)")
        for p in pieces:
            fh.write(p)
        assert not fh.direct  # page cache from the failed write on
    assert calls
    assert (tmp_path / "f.bin").read_bytes() == b"".join(p.tobytes() for p in pieces)


def test_an_error_is_raised_not_swallowed(tmp_path, monkeypatch):
    def full_disk(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(directio.os, "write", full_disk)
    fh = AppendFile(tmp_path / "f.bin")
    with pytest.raises(OSError, match="No space") as e:
        fh.write(b"x" * (9 * MiB))
    assert e.value.errno == errno.ENOSPC
    with pytest.raises(OSError, match="No space"):
        fh.close()  # the rest cannot be written either: said again, and the file is closed
    assert fh.closed


def test_not_seekable_so_zipfile_writes_data_descriptors(tmp_path):
    path = tmp_path / "z.zip"
    members = {
        f"a/{i}": _pieces([n], seed=i)[0].tobytes() for i, n in enumerate([10, 9 * MiB, 0, 70_000])
    }
    with AppendFile(path) as fh:
        with pytest.raises(io.UnsupportedOperation):
            fh.seek(0)
        assert isinstance(io.UnsupportedOperation(), OSError)
        with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, data in members.items():
                with zf.open(name, "w", force_zip64=True) as out:
                    out.write(data)
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None  # every member's CRC-32 checked
        assert {i.filename: zf.read(i) for i in zf.infolist()} == members
        assert all(i.flag_bits & 0x8 for i in zf.infolist())  # sizes after the data


def test_write_whole_writes_the_pieces_in_order(tmp_path):
    pieces = _pieces([100, 8 * MiB, 4096], seed=3)
    write_whole(tmp_path / "k", list(pieces))
    assert (tmp_path / "k").read_bytes() == b"".join(p.tobytes() for p in pieces)


def test_files_one_after_another_and_at_once_in_one_thread(tmp_path):
    # a thread reuses its buffer for its next file: nothing of the last file may show, and
    # two files open at once never share one
    with AppendFile(tmp_path / "a") as a:
        a.write(b"a" * (9 * MiB + 5))
        with AppendFile(tmp_path / "b") as b:
            b.write(b"b" * 100)
            a.write(b"A" * 7)
    with AppendFile(tmp_path / "c") as c:
        c.write(b"c" * 10)
    assert (tmp_path / "a").read_bytes() == b"a" * (9 * MiB + 5) + b"A" * 7
    assert (tmp_path / "b").read_bytes() == b"b" * 100
    assert (tmp_path / "c").read_bytes() == b"c" * 10


def test_a_ctrl_c_right_after_the_file_is_opened_leaves_no_descriptor(tmp_path, monkeypatch):
    # a Ctrl-C between os.open and the assignment lost the descriptor: the file stayed open
    # (deleted, once the write was cleaned up) for the rest of the session
    import gc
    import signal
    import time

    real = os.open

    def opened_then_ctrl_c(*args, **kwargs):
        fd = real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs here, before open's result is kept
        return fd

    monkeypatch.setattr(directio.os, "open", opened_then_ctrl_c)
    path = tmp_path / "f.bin"
    with pytest.raises(KeyboardInterrupt):
        directio.AppendFile(path)
    monkeypatch.undo()
    gc.collect()
    held = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            held.append(os.readlink(f"/proc/self/fd/{fd}"))
    assert str(path) not in held


def _lined_up(data, place, offset=0):
    """``data`` copied into page-aligned memory at an address equal to ``place`` (its
    offset in the file) + ``offset`` modulo 4096 (offset 0: lined up)."""
    import mmap

    m = mmap.mmap(-1, len(data) + 8192)
    start = (place + offset) % 4096
    view = memoryview(m)[start : start + len(data)]
    view[:] = data
    return view


def _counting(seen):
    """AppendFile._write_in_place, noting in ``seen`` the length of each piece it wrote
    from the piece's own memory."""
    real = directio.AppendFile._write_in_place

    def spy(self, view):
        done = real(self, view)
        if done > 4096:
            seen.append(view.nbytes)
        return done

    return spy


def _spy_in_place(monkeypatch):
    """The lengths of the pieces AppendFile wrote from their own memory."""
    seen = []
    monkeypatch.setattr(directio.AppendFile, "_write_in_place", _counting(seen))
    return seen


@settings(max_examples=20, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 3 * MiB), min_size=1, max_size=6),
    off=st.lists(st.sampled_from([0, 0, 1, 512, 4095]), min_size=6, max_size=6),
    seed=st.integers(0, 2**16),
)
def test_pieces_lined_up_with_their_place_are_written_from_their_memory(
    tmp_path_factory, sizes, off, seed
):
    # a large piece whose address equals its file offset modulo 4096 goes to the disk
    # from its own memory; others are copied; the file holds the same bytes either way
    path = tmp_path_factory.mktemp("d") / "f.bin"
    raw = [p.tobytes() for p in _pieces(sizes, seed)]
    seen: list[int] = []
    real = directio.AppendFile._write_in_place  # (hypothesis runs without monkeypatch)
    directio.AppendFile._write_in_place = _counting(seen)
    try:
        with AppendFile(path) as fh:
            place, expect = 0, []
            for data, o in zip(raw, off, strict=False):
                piece = _lined_up(data, place, o)
                fh.write(piece)
                if o == 0 and len(data) >= directio.IN_PLACE_FROM and fh.direct:
                    expect.append(len(data))
                place += len(data)
            direct = fh.direct
    finally:
        directio.AppendFile._write_in_place = real
    assert path.read_bytes() == b"".join(raw)
    if direct:
        assert seen == expect


@pytest.mark.parametrize("how", ["refused", "short"])
def test_a_write_from_a_pieces_memory_that_fails_loses_no_bytes(tmp_path, monkeypatch, how):
    # the disk refuses the piece's memory (another alignment: pieces are copied from then
    # on, still past the page cache), or writes only some of its blocks (the rest follows)
    if not hasattr(os, "O_DIRECT"):
        pytest.skip("no O_DIRECT on this platform")
    seen = _spy_in_place(monkeypatch)
    real_write = os.write
    calls = []

    def flaky_write(fd, data):
        if memoryview(data).nbytes >= MiB and not calls:  # the first write from a piece
            calls.append(1)
            if how == "refused":
                raise OSError(errno.EINVAL, "Invalid argument")
            return real_write(fd, memoryview(data)[:8192])
        return real_write(fd, data)

    monkeypatch.setattr(directio.os, "write", flaky_write)
    sizes = [3 * MiB + 7, 100, 2 * MiB, 5 * MiB + 1]
    raw = [p.tobytes() for p in _pieces(sizes, seed=3)]
    with AppendFile(tmp_path / "f.bin") as fh:
        if not fh.direct:
            pytest.skip("this file system refuses O_DIRECT at open")
        place = 0
        for data in raw:
            fh.write(_lined_up(data, place))
            place += len(data)
        assert fh.direct
    assert calls
    assert (tmp_path / "f.bin").read_bytes() == b"".join(raw)
    # refused: copied from then on; short: the piece's other blocks followed from its memory
    assert seen == ([] if how == "refused" else [sizes[0], sizes[2], sizes[3]])
