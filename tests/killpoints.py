"""Kill an ArrayWriter at every step of its close(): the driver of tests/test_writer_kill.py.

Run as ``python killpoints.py SCENARIO.json``. For k = 1, 2, ... it forks a child that
appends every row of the scenario (in a scrambled order of batches, each with its store
indices), then calls ``close()`` with the functions that change the disk — renames,
exchanges, links, unlinks, folder creation and removal, file writes, zip members —
wrapped so that the k-th call made during ``close()`` SIGKILLs the process just before
it happens. (fsync is no step here: a SIGKILL keeps the page cache, so what reaches the
disk does not depend on it; tests/test_writer.py checks that every file is fsynced
before it is published.) It stops at the first k that ``close()`` survives, and prints one JSON line
per k: ``{"k": k, "killed": bool, "path": ...}``. Each k writes to its own copy of the
old store (``<workdir>/k<k><ext>``), so the states can be checked afterwards.

The driver imports daskimg once but never runs zarr or threads before forking (zarr's
event-loop thread would not survive a fork); everything runs in the children.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import sys
import time

import numpy as np


def scenario_rows(n: int, d: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """The new rows of sample i: ``pred[i]`` and ``name[i]`` (the test's oracle too)."""
    pred = (np.arange(n, dtype=np.float32)[:, None] * 10 + np.arange(d) + seed).astype(np.float32)
    names = [f"new/{seed}/{i:04d}-é.png" for i in range(n)]
    return pred, names


def batches(n: int, seed: int, order: str = "index") -> list[np.ndarray]:
    """Store indices of each batch, in the scrambled order they arrive (within a batch too);
    for ``order="store"``, in store order."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n) if order == "index" else np.arange(n)
    return [b for b in np.array_split(perm, 7) if len(b)]


def writer_args(sc: dict) -> dict:
    arrays = {"pred": ((sc["d"],), "float32"), sc["text"]: ((), str)}
    args: dict = {"arrays": arrays, "mode": sc["mode"], "overwrite": sc["overwrite"]}
    args.update(shard_chunks=2, checkpoint_every=None, threads=sc["threads"])
    if sc["mode"] == "w":
        args.update(chunks=8, num_samples=sc["n"])
    if sc.get("order"):
        args["order"] = sc["order"]
    return args


DISK = [
    (os, "replace"),
    (os, "rename"),
    (os, "link"),
    (os, "unlink"),
    (os, "remove"),
    (os, "rmdir"),
    (os, "mkdir"),
    (os, "pwrite"),
    (os, "write"),
    (os, "ftruncate"),
    (shutil, "copyfileobj"),
    (shutil, "copy2"),
]


def arm(k: int) -> None:
    """SIGKILL this process just before the k-th call that changes the disk."""
    import zipfile

    from daskimg.store import location

    counter = itertools.count(1)

    def wrap(fn):
        def wrapper(*args, **kwargs):
            if next(counter) == k:
                os.kill(os.getpid(), signal.SIGKILL)
            return fn(*args, **kwargs)

        return wrapper

    for mod, name in DISK:
        setattr(mod, name, wrap(getattr(mod, name)))
    location._exchange = wrap(location._exchange)
    zipfile.ZipFile.write = wrap(zipfile.ZipFile.write)


def child(sc: dict, path: str, k: int) -> None:
    from daskimg.writeback import ArrayWriter

    # a SIGKILL keeps the page cache: what reaches the disk does not depend on fsync (it
    # matters for power loss only), so it is skipped here
    os.fsync = lambda fd: None
    pred, names = scenario_rows(sc["n"], sc["d"], sc["seed"])
    w = ArrayWriter(path, **writer_args(sc))
    for j, idx in enumerate(batches(sc["n"], sc["seed"], sc.get("order") or "index")):
        w.append(pred=pred[idx], index=idx, **{sc["text"]: [names[i] for i in idx]})
        if j == 2:
            w.checkpoint()
    arm(k)
    w.close()


def main() -> None:
    import daskimg.writeback  # once, before forking (importing starts no thread)

    assert daskimg.writeback
    with open(sys.argv[1]) as fh:
        sc = json.load(fh)
    ext = ".zarr.zip" if sc["kind"] == "zip" else ".zarr"
    for k in range(1, sc.get("max_k", 100_000)):
        path = os.path.join(sc["workdir"], f"k{k}{ext}")
        if sc["old"]:
            if os.path.isdir(sc["old"]):
                shutil.copytree(sc["old"], path)
            else:
                shutil.copy2(sc["old"], path)
        pid = os.fork()
        if pid == 0:
            try:
                child(sc, path, k)
            except BaseException as e:  # a failure of its own: report it
                print(json.dumps({"k": k, "error": repr(e)}), flush=True)
                os._exit(1)
            os._exit(0)
        deadline = time.monotonic() + 120
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                print(json.dumps({"k": k, "error": "hung"}), flush=True)
                return
            time.sleep(0.005)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        ok = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        print(json.dumps({"k": k, "killed": killed, "ok": ok, "path": path}), flush=True)
        if not killed:
            return


if __name__ == "__main__":
    main()
