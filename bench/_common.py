"""Shared helpers of the benchmarks: the cached photo library, tables, peak RSS, eviction.

Not part of the package. Every benchmark imports this module from the same folder,
so run them as ``python bench/<name>.py`` from anywhere.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import psutil

#: every cached input lives below this folder (safe to delete at any time)
CACHE = Path(os.environ.get("DASKIMG_BENCH_CACHE", "/tmp/daskimg-bench"))
#: the eight colour photos bundled with scikit-image, one class each
CLASSES = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle", "hubble", "ihc", "retina")
#: (height, width) of every JPEG of the library, like a typical 500x375 web photo
PHOTO_SIZE = (375, 500)
#: (height, width) the benchmarks decode to
TARGET = (224, 224)
#: distinct JPEGs made per class; bigger sets repeat them (hard links) instead of making more
UNIQUE_PER_CLASS = 500

MiB = 2**20


# --- the photo library ---------------------------------------------------------------


def _per_class(n: int, k: int) -> list[int]:
    """``n`` samples spread over ``k`` classes (the first ``n % k`` get one more)."""
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def _base_library(per_class: int, size: tuple[int, int]) -> Path:
    """The cached library with at least ``per_class`` JPEGs in each of the 8 classes."""
    from daskimg.testing import make_photo_folder

    root = CACHE / f"photos-{size[0]}x{size[1]}"
    marker = root / ".per_class"
    have = int(marker.read_text()) if marker.is_file() else 0
    if have >= per_class:
        return root / "all"
    # make_photo_folder is deterministic, so a bigger library holds the smaller one
    want = max(per_class, 2 * have)
    t = time.perf_counter()
    print(
        f"[setup] writing {want * len(CLASSES)} JPEGs of {size[1]}x{size[0]} into {root} ...",
        file=sys.stderr,
        flush=True,
    )
    tmp = root / "all.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    make_photo_folder(tmp, n_per_class=want, size=size, seed=0, classes=CLASSES)
    shutil.rmtree(root / "all", ignore_errors=True)
    for sub in root.glob("n*"):  # subsets hard-link the old files; rebuild them on demand
        shutil.rmtree(sub, ignore_errors=True)
    os.replace(tmp, root / "all")
    marker.write_text(str(want))
    print(f"[setup] done in {time.perf_counter() - t:.0f}s", file=sys.stderr, flush=True)
    return root / "all"


def photo_folder(n: int, *, size: tuple[int, int] = PHOTO_SIZE) -> Path:
    """A cached folder of ``n`` JPEGs (``<class>/<class>_<i>.jpg``, 8 classes, seeded).

    Built once from :func:`daskimg.testing.make_photo_folder` (scikit-image's bundled
    photos, no download) and shared by all benchmarks; a subset is a folder of hard
    links to the first files of each class. Beyond ``UNIQUE_PER_CLASS`` files per class
    the files repeat (file ``i`` links to ``i % UNIQUE_PER_CLASS``).
    """
    counts = _per_class(n, len(CLASSES))
    unique = min(max(counts), UNIQUE_PER_CLASS)
    base = _base_library(unique, size)
    sub = base.parent / f"n{n}"
    if (sub / ".done").is_file():
        return sub
    shutil.rmtree(sub, ignore_errors=True)
    for cls, k in zip(CLASSES, counts, strict=True):
        (sub / cls).mkdir(parents=True)
        for i in range(k):
            src = base / cls / f"{cls}_{i % unique:04d}.jpg"
            os.link(src, sub / cls / f"{cls}_{i:06d}.jpg")
    (sub / ".done").write_text("")
    return sub


def list_photos(folder: Path) -> tuple[list[str], list[int]]:
    """Paths (class-sorted, like ``daskimg.from_folder``) and class indices of a photo folder."""
    paths: list[str] = []
    labels: list[int] = []
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    for label, cls in enumerate(classes):
        files = sorted(f for f in (folder / cls).iterdir() if f.suffix == ".jpg")
        paths.extend(os.fspath(f) for f in files)
        labels.extend([label] * len(files))
    return paths, labels


def code_key() -> str:
    """A short hash of the daskimg modules that decide what a store holds.

    Cached stores are rebuilt when it changes (``store``, ``codecs``, ``chunks``, ...);
    changes elsewhere in the package do not make the benchmarks rebuild their inputs.
    """
    import daskimg

    pkg = Path(daskimg.__file__).parent
    h = hashlib.sha1(daskimg.__version__.encode())
    for name in (
        "store.py",
        "codecs.py",
        "chunks.py",
        "jpeg.py",
        "writer.py",
        "writer_checks.py",
        "writer_shards.py",
        "writer_staging.py",
    ):
        f = pkg / name
        if f.is_file():
            h.update(name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:10]


# --- page cache ----------------------------------------------------------------------


def _files(paths: Iterable[str | os.PathLike[str]]) -> Iterator[str]:
    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            for dirpath, _, names in os.walk(p):
                for name in names:
                    yield os.path.join(dirpath, name)
        elif os.path.isfile(p):
            yield p


def evict(paths: Iterable[str | os.PathLike[str]]) -> int:
    """Drop the files (folders: every file below) from the page cache; return bytes dropped.

    ``daskimg.bench.evict``: releases daskimg's memory maps of them first (mapped pages
    stay cached whatever we advise) and ``fsync``s (so do dirty pages).
    """
    from daskimg.bench import evict as evict_files

    return evict_files(list(paths))


def warm(paths: Iterable[str | os.PathLike[str]]) -> int:
    """Read the files once so they are in the page cache; return bytes read."""
    total = 0
    for f in _files(paths):
        with open(f, "rb", buffering=0) as fh:
            while chunk := fh.read(8 * MiB):
                total += len(chunk)
    return total


def prepare_cache(paths: Sequence[str | os.PathLike[str]], *, cold: bool) -> None:
    """Warm (default) or evict (``cold``) the given files before a measurement."""
    if cold:
        evict(paths)
    else:
        warm(paths)


# --- memory --------------------------------------------------------------------------


def tree_rss(proc: psutil.Process | None = None) -> int:
    """RSS of a process plus all its children, in bytes (shared pages counted per process)."""
    proc = proc or psutil.Process()
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with suppress(psutil.Error):  # a child that just exited
            total += p.memory_info().rss
    return total


class PeakRSS:
    """Sample the RSS of this process and its children in a thread; ``.peak`` in bytes.

    Use as a context manager around the work. Sampling every ``interval`` seconds can
    miss a short spike of a child; for this process the kernel's exact high-water mark
    (``VmHWM``) is taken into account too.

    The sampler must not slow down what it measures: finding the children means reading
    every process's ``/proc`` entry (~1 ms here), which every 10 ms took a tenth of a core
    and the GIL from the loader under test. So the list of children is refreshed twice a
    second, only their RSS and this process's are read in between, and without children
    (threads only) this process is sampled every 0.1 s, its high-water mark covering the rest.
    """

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        proc = psutil.Process()
        kids: list[psutil.Process] = []
        found = -math.inf
        while not self._stop.is_set():
            if time.monotonic() - found > 0.5:
                with suppress(psutil.Error):
                    kids = proc.children(recursive=True)
                found = time.monotonic()
            total = proc.memory_info().rss
            for p in kids:
                with suppress(psutil.Error):  # a child that just exited
                    total += p.memory_info().rss
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval if kids else max(self.interval, 0.1))

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss(), hwm_self())


def hwm_self() -> int:
    """Peak RSS of this process in bytes: ``VmHWM`` from ``/proc/self/status``.

    Not ``ru_maxrss``: Linux carries that over ``fork`` and ``exec``, so a subprocess
    started by a big parent reports the parent's peak.
    """
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def run_json(argv: Sequence[str], *, timeout: float = 600) -> dict[str, Any]:
    """Run a Python subprocess whose last stdout line is JSON; return that dict."""
    import json

    proc = subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"subprocess {' '.join(argv[:3])} ... failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(
            f"subprocess printed no JSON:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )
    return json.loads(lines[-1])


# --- timing --------------------------------------------------------------------------


@contextmanager
def timer() -> Iterator[list[float]]:
    """``with timer() as t: ...`` then ``t[0]`` is the elapsed seconds."""
    out = [0.0]
    start = time.perf_counter()
    try:
        yield out
    finally:
        out[0] = time.perf_counter() - start


def median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    if not s:
        return math.nan
    m = len(s) // 2
    return s[m] if len(s) % 2 else (s[m - 1] + s[m]) / 2


# --- output --------------------------------------------------------------------------


def fmt(v: Any, spec: str = "") -> str:
    """Format a cell: None -> '-', NaN -> '-', numbers with ``spec``."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, str):
        return v
    return format(v, spec)


def print_table(
    title: str, header: Sequence[str], rows: Sequence[Sequence[Any]], *, file: Any = None
) -> str:
    """Print a plain-text table (first column left-aligned, others right); return its text."""
    cells = [[str(h) for h in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r: Sequence[str]) -> str:
        parts = [r[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)
        ]
        return "  ".join(parts).rstrip()

    text = "\n".join(
        [title, line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]]
    )
    print(text, file=file or sys.stdout, flush=True)
    return text


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def machine() -> str:
    """One line about where this ran (the numbers only compare within one run).

    The load average is included: on a 2-core machine anything else running (a test
    suite, another benchmark) changes every number.
    """
    cpu = os.cpu_count()
    mem = psutil.virtual_memory().total / 2**30
    load = os.getloadavg()[0]
    busy = "  << other work is running: numbers will be noisy" if load > 0.5 * (cpu or 1) else ""
    return (
        f"{cpu} cores, {mem:.0f} GiB RAM, {platform.machine()}, "
        f"Python {platform.python_version()}, load avg {load:.2f}{busy}"
    )


def base_parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser with ``--quick``, ``--n`` and ``--cold`` (what every benchmark takes)."""
    p = argparse.ArgumentParser(
        description=(doc or "").strip().splitlines()[0] if doc else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=doc,
    )
    p.add_argument("--quick", action="store_true", help="small sizes: finishes in under a minute")
    p.add_argument("--n", type=int, default=None, help="number of samples (scales the run)")
    p.add_argument(
        "--cold",
        action="store_true",
        help="evict the input files from the page cache before each measurement (default: warm)",
    )
    return p
