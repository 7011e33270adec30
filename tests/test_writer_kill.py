"""A writer killed at every step of close() leaves the old store or the new one, never a
mix and never nothing; ``resume=True`` then finishes it (or says it was finished).

``killpoints.py`` forks one writer per kill point k and SIGKILLs it just before the k-th
call of close() that changes the disk (renames, folder exchanges, links, unlinks, file
writes, zip members), until close() survives. Every resulting state is checked
here against numpy oracles, read by daskimg and by plain zarr, verified, then resumed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import plain_group

import daskimg as di
from daskimg.errors import StoreExistsError
from daskimg.storeinfo import verify
from daskimg.writeback.writer import ArrayWriter

sys.path.insert(0, str(Path(__file__).parent))
import killpoints

N, D = 40, 3

SCENARIOS = {  # (kind, mode, overwrite, the new text array); rows placed by index
    "zip-w-overwrite": ("zip", "w", True, "paths"),
    "zip-w-overwrite-store-order": ("zip", "w", True, "paths"),  # rows in arrival order
    "dir-w-overwrite": ("dir", "w", True, "paths"),
    "zip-a": ("zip", "a", False, "name"),
    "dir-a": ("dir", "a", False, "name"),
    "zip-a-overwrite": ("zip", "a", True, "paths"),
    "dir-a-overwrite": ("dir", "a", True, "paths"),
}


def old_store(path: Path, mode: str, overwrite: bool) -> None:
    """The store there before: a split store (mode "a"; with an old ``pred`` to replace if
    ``overwrite``), or a store an earlier ArrayWriter wrote (mode "w")."""
    rng = np.random.default_rng(0)
    if mode == "a":
        ds = di.ImageSet(
            rng.integers(0, 255, (N, 4, 4, 3)).astype(np.uint8),
            np.arange(N) % 3,
            classes=["a", "b", "c"],
            paths=[f"old/{i}.png" for i in range(N)],
            columns={"pred": np.full((N, D), -1, np.float32)} if overwrite else {},
        )
        di.to_zarr(ds, path, chunks=8, shard_chunks=2, order="source")
        return
    with ArrayWriter(path, arrays={"old": ((2,), "int16")}, chunks=8) as w:
        w.append(old=np.arange(2 * N, dtype=np.int16).reshape(N, 2))


def read_all(path: Path) -> dict[str, np.ndarray]:
    """Every array of the store, read by daskimg and checked against plain zarr."""
    ds = di.open_zarr(path)
    got = {k: np.asarray(v.compute() if hasattr(v, "compute") else v) for k, v in ds.arrays.items()}
    g = plain_group(path)
    assert sorted(g.array_keys()) == sorted(got)
    for k, v in got.items():
        np.testing.assert_array_equal(np.asarray(g[k][...]).astype(v.dtype), v)
    return got


def same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def digest(path: Path) -> str:
    """Names and bytes of every file a kill left at ``path`` and beside it (zarr's temporary
    names made alike), so that kill points that left the same files are checked once."""
    h = hashlib.sha256()
    for suffix in ("", ".partial", ".tmp"):
        p = Path(str(path) + suffix)
        if not os.path.lexists(p):
            continue
        files = [p] if p.is_file() else sorted(p.rglob("*"))
        for f in files:
            rel = suffix + "/" + (f.relative_to(p).as_posix() if f != p else "")
            h.update(re.sub(r"\.[0-9a-f]{32}\.partial$", ".TMP.partial", rel).encode() + b"\0")
            if f.is_file():
                h.update(f.read_bytes())
    return h.hexdigest()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_kill_at_every_step_of_close(tmp_path, name, monkeypatch):
    # durability against power loss is not what this checks: without fsync it runs ~3x faster
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    kind, mode, overwrite, text = SCENARIOS[name]
    ext = ".zarr.zip" if kind == "zip" else ".zarr"
    old = tmp_path / f"old{ext}"
    old_store(old, mode, overwrite)
    old_arrays = read_all(old)
    pred, names = killpoints.scenario_rows(N, D, seed=1)
    new_arrays = {"pred": pred, text: np.array(names, dtype=object)}
    if mode == "a":
        new_arrays = {**old_arrays, **new_arrays}
    work = tmp_path / "work"
    work.mkdir()
    sc = {
        "kind": kind, "mode": mode, "overwrite": overwrite, "n": N, "d": D, "seed": 1,
        "threads": 2, "text": text, "old": str(old), "workdir": str(work),
        "order": "store" if name.endswith("store-order") else None,
    }  # fmt: skip
    (tmp_path / "sc.json").write_text(json.dumps(sc))
    out = subprocess.run(
        [sys.executable, str(Path(__file__).parent / "killpoints.py"), str(tmp_path / "sc.json")],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    runs = [json.loads(line) for line in out.stdout.splitlines()]
    assert not [r for r in runs if "error" in r], runs
    assert runs[-1]["ok"] and all(r["killed"] for r in runs[:-1])  # the last one finished
    assert len(runs) > 15  # a close() has many steps; each was a kill point

    outcomes = {"old": 0, "new": 0}
    states: dict[str, str] = {}
    for r in runs:
        path = Path(r["path"])
        state = digest(path)
        if state in states:  # the same files as an earlier kill point: checked there
            outcomes[states[state]] += 1
            continue
        got = read_all(path)  # never nothing: a store that opens, complete
        if same(got, old_arrays):
            states[state] = "old"
        else:
            assert same(got, new_arrays), f"k={r['k']}: a mix of the old and new store"
            states[state] = "new"
        outcomes[states[state]] += 1
        assert verify(path) == [], r
        resume_and_finish(path, sc, new_arrays, published=states[state] == "new")
    print(f"{name}: {len(runs)} kill points, {len(states)} distinct states, outcomes {outcomes}")
    assert outcomes["old"] and outcomes["new"]  # both sides of the publish were hit


def resume_and_finish(path: Path, sc: dict, new_arrays: dict, *, published: bool) -> None:
    """resume=True after the kill, then append what is missing and close: the new store."""
    args = killpoints.writer_args(sc)
    if (
        published
        and sc["mode"] == "a"
        and not sc["overwrite"]
        and not Path(f"{path}.partial/writer.json").exists()
    ):
        # finished and cleaned up before the kill: resume says so
        with pytest.raises(StoreExistsError, match="found no unfinished write"):
            ArrayWriter(path, **args, resume=True)
        return
    w = ArrayWriter(path, **args, resume=True)
    with w:
        todo = set(w.missing().tolist())
        if published and not sc["overwrite"]:
            assert not todo and len(w) == N  # every row is in; close() has nothing to do
        for idx in killpoints.batches(N, sc["seed"], sc["order"] or "index"):
            if todo.issuperset(idx.tolist()):
                w.append(
                    pred=new_arrays["pred"][idx],
                    index=idx,
                    **{sc["text"]: list(new_arrays[sc["text"]][idx])},
                )
            else:
                assert not todo.intersection(idx.tolist())  # batches are whole
    assert same(read_all(path), new_arrays)
    assert verify(path) == []
    assert not [s for s in (".partial", ".tmp", ".lock") if os.path.lexists(str(path) + s)]


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_every_file_is_fsynced_before_it_is_published(tmp_path, monkeypatch, name):
    """At the atomic step, every file and folder published was fsynced after its last
    change, and the folder holding the store is fsynced after the step."""
    from daskimg.store import location

    kind, mode, overwrite, text = SCENARIOS[name]
    path = tmp_path / f"s{'.zarr.zip' if kind == 'zip' else '.zarr'}"
    old_store(path, mode, overwrite)
    order = "store" if name.endswith("store-order") else None
    sc = {"mode": mode, "overwrite": overwrite, "n": N, "d": D, "threads": 2, "text": text}
    sc["order"] = order
    pred, names = killpoints.scenario_rows(N, D, seed=1)
    w = ArrayWriter(path, **killpoints.writer_args(sc))
    for idx in killpoints.batches(N, 1, order or "index"):
        w.append(pred=pred[idx], index=idx, **{text: [names[i] for i in idx]})

    synced: dict[tuple[int, int], tuple[int, int]] = {}  # inode: (size, mtime) at its fsync
    events: list[tuple[str, int]] = []
    real_fsync, real_replace = os.fsync, location.replace_store

    def fsync(fd):
        st = os.fstat(fd)
        synced[st.st_dev, st.st_ino] = (st.st_size, st.st_mtime_ns)
        events.append(("fsync", st.st_ino))
        real_fsync(fd)

    published = []

    def replace_store(new, target):
        entries = [Path(new)] if os.path.isfile(new) else [Path(new), *Path(new).rglob("*")]
        for f in entries:
            st = os.stat(f)
            assert synced.get((st.st_dev, st.st_ino)) == (st.st_size, st.st_mtime_ns), (
                f"{f} is published without an fsync after its last change"
            )
        published.append(len(entries))
        real_replace(new, target)
        events.append(("published", 0))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(location, "replace_store", replace_store)
    w.close()
    assert published and published[0] >= (1 if kind == "zip" else 10)  # files checked
    after = events[events.index(("published", 0)) :]
    assert ("fsync", os.stat(tmp_path).st_ino) in after  # the exchange or rename itself
    got = read_all(path)
    np.testing.assert_array_equal(got["pred"], pred)
    assert got[text].tolist() == names
