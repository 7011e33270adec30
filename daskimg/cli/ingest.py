"""``daskimg ingest`` (a folder of images -> one store per split) and ``daskimg convert``
(HDF5 or .npy/.npz arrays -> a store), on the scheduler ``--scheduler`` names."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from ..errors import DaskImgError, DecodeError, IncompleteStoreError, StoreExistsError
from ..read.folder import IMAGE_EXTENSIONS, SPLIT_DIRS
from ..remote import as_local, is_url

logger = logging.getLogger("daskimg")

__all__ = ["convert", "ingest", "scheduler"]


@contextlib.contextmanager
def scheduler(spec: str, workers: int | None = None) -> Iterator[None]:
    """Run the body on ``spec``: ``auto`` (no scheduler chosen: ``to_zarr`` decodes local
    files in worker processes, :mod:`daskimg.store.procpool`, the rest on threads),
    ``threads``, ``processes``, ``sync``, or ``HOST:PORT`` of a dask scheduler;
    ``workers``: processes or threads on this machine (dask's ``num_workers``)."""
    import dask

    local: dict[str, Any] = {} if workers is None else {"num_workers": workers}
    if spec == "processes":  # dask's workers exit with this process, killed or not
        from ..store.procpool import follow_parent

        local["multiprocessing.initializer"] = follow_parent
    if spec in ("auto", "threads", "processes", "sync"):
        with dask.config.set(local if spec == "auto" else {"scheduler": spec, **local}):
            yield
        return
    address = check_scheduler(spec)
    assert address is not None
    client = _connect(address)
    try:
        from ..store.write import announce_dashboard

        announce_dashboard(client, sys.stdout)
        if not client.scheduler_info().get("workers"):
            # (workers still queued in a batch system, or all dead): said, and bounded
            print(
                f"the dask scheduler at {address} has no workers yet; waiting up to "
                f"{WORKER_WAIT / 60:.0f} minutes for one to join"
            )
            try:
                client.wait_for_workers(1, timeout=WORKER_WAIT)
            except TimeoutError:
                raise ValueError(
                    f"no worker joined the dask scheduler at {address} in "
                    f"{WORKER_WAIT / 60:.0f} minutes; start workers (dask worker {address}), "
                    "or use --scheduler auto"
                ) from None
        with dask.config.set(scheduler=client):  # the client is no process-wide default
            yield
    finally:
        client.close()


#: seconds a scheduler may take to answer (TCP connect and dask's handshake)
CONNECT_WAIT = 20.0
#: seconds to wait for a first worker to join a scheduler that has none
WORKER_WAIT = 600.0
_LOCAL = ("auto", "threads", "processes", "sync")


def check_scheduler(spec: str) -> str | None:
    """The address of the dask scheduler ``spec`` names (None: a local scheduler); a spec
    that is neither a local scheduler nor HOST:PORT is refused, naming the choices (a typo,
    "thread", said "missing port number in address 'thread'")."""
    if spec in _LOCAL:
        return None
    if "://" not in spec and ":" not in spec:
        near = [c for c in _LOCAL if c.startswith(spec.lower()[:4])] if spec else []
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ValueError(
            f"--scheduler {spec!r} is none of {', '.join(_LOCAL)} and no HOST:PORT of a dask "
            f"scheduler{hint}"
        )
    return spec if "://" in spec else f"tcp://{spec}"


def _connect(address: str) -> Any:
    """A distributed ``Client`` of the scheduler at ``address``, or a ValueError naming it.

    ``Client(timeout=)`` bounds the TCP connect, not what follows: a server that accepts and
    stays silent (an HTTP server, dask's own dashboard port) hung the ingest for good, and one
    that speaks first (SSH) had its greeting read as a message length (a MemoryError of
    exabytes, as a traceback). The client is made on a thread of its own, waited for
    CONNECT_WAIT seconds, and any failure is said as the address unreachable."""
    from distributed import Client

    made: dict[str, Any] = {}

    def connect() -> None:
        try:
            # not the default client: one that never finishes connecting must not become
            # the process's scheduler (Client sets that before it connects)
            made["client"] = Client(address, timeout="5s", set_as_default=False)
        except BaseException as e:  # said below, whatever the comm raised
            made["error"] = e

    thread = threading.Thread(target=connect, name="daskimg-connect", daemon=True)
    thread.start()
    thread.join(CONNECT_WAIT)
    if "client" in made:
        return made["client"]
    error = made.get("error")
    why = (
        "it answered in another protocol than dask's (an SSH or web server?)"
        if isinstance(error, MemoryError)  # its first bytes read as a message's length
        else repr(error)
        if error is not None
        else f"something listens there but did not answer as a dask scheduler in "
        f"{CONNECT_WAIT:.0f} s: the dashboard's port (8787) rather than the scheduler's (8786)?"
    )
    raise ValueError(
        f"cannot reach a dask scheduler at {address!r} ({why}); check the address and that "
        "`dask scheduler` is running there, or use --scheduler auto"
    )


def _out_folder(src: str, out: str, opts: Mapping[str, Any] | None) -> list[str]:
    """OUT as ``from_folder``'s ``exclude=`` takes it, where it could be read as part of SRC:
    a folder already there, beside SRC's files (an OUT yet to be made, or on another
    file system than SRC's, holds nothing to leave out)."""
    if is_url(out) != is_url(src):
        return []
    if not is_url(out):
        return [os.path.abspath(out)] if os.path.isdir(out) else []
    from ..remote import filesystem

    fs, path = filesystem(out, opts)
    return [out] if fs.isdir(path) else []


def ingest(args: argparse.Namespace) -> int:
    from ..read.folder import from_folder
    from ..store.write import check_writable

    t0 = time.perf_counter()
    opts = args.storage_options
    _check_arguments(args)  # before SRC is listed (which may take long, and warns)
    args.src, args.out = as_local(args.src), as_local(args.out)  # file:// as their paths
    name = args.out.rstrip("/").rsplit("/", 1)[-1]
    if name.endswith((".zarr", ".zarr.zip")):
        # the folder of the split stores would look like a store itself: info and verify
        # read it as one, and called it damaged
        raise ValueError(
            f"OUT {args.out!r} is named like a store; ingest writes one store per split into "
            f"the folder OUT ({args.out.rstrip('/')}/train.zarr.zip, ...). Name the folder "
            "without .zarr"
        )
    if len(args.size) == 3 and args.channels not in (None, 1):
        # volumes have one channel: --channels 3 was dropped without a word
        raise ValueError(
            f"--channels {args.channels} is for images; a 3-D --size reads volumes, which "
            "have one channel. Drop --channels"
        )
    _refuse_out_holding_images(args.src, args.out, opts)
    try:
        ds = from_folder(
            args.src,
            size=args.size,
            channels=3 if args.channels is None else args.channels,
            resize=args.resize,
            draft=not args.no_draft,
            on_error=args.on_error,
            stray=args.stray,
            masks=args.masks,
            classes=args.classes,
            # stores written inside SRC are not a class on the next run; OUT is relative to
            # the working directory (a class folder of SRC with its name stays a class)
            exclude=[
                *_out_folder(args.src, args.out, opts),
                *_store_folders(args.src),
                *args.exclude,
            ],
            dtype=args.dtype,
            storage_options=opts if is_url(args.src) else None,
        )
    except ValueError as e:
        if "pass exclude=" in str(e):
            raise ValueError(f"{e} (on the command line: --exclude DIR)") from None
        if "stray='ignore'" not in str(e):
            raise
        raise ValueError(f"{e} (on the command line: --stray ignore)") from None
    if ds.source_splits is not None:
        if args.valid is not None or args.test is not None or args.no_stratify:
            raise ValueError(
                f"{args.src} already holds split folders; drop --valid/--test/--no-stratify"
            )
        parts = ds.split()
    else:
        valid = 0.1 if args.valid is None else args.valid
        test = 0.1 if args.test is None else args.test
        if valid + test >= 1:  # (each is a fraction from 0 to below 1: _check_arguments)
            raise ValueError(f"--valid {valid} and --test {test} must leave something to train on")
        fractions = {"train": 1 - valid - test, "valid": valid, "test": test}
        parts = ds.split(
            {k: v for k, v in fractions.items() if v > 0},
            seed=args.seed,
            stratify=not args.no_stratify,
        )
    print(
        f"found {len(ds)} files in {len(ds.classes)} classes under {args.src}; splits: "
        + ", ".join(
            f"{k} {len(v)}" + (" (unlabelled)" if v.labels is None else "")
            for k, v in parts.items()
        )
    )
    ext = ".zarr.zip" if args.format == "zip" else ".zarr"
    written = {name for name, part in parts.items() if len(part)}
    for name in written:  # what to_zarr refuses (a file name that is not UTF-8), before any
        check_writable(parts[name])  # split is decoded: not after train was written

    # one ingest into OUT at a time: each checks OUT's earlier stores, then writes its own;
    # two at once (train/valid from one SRC, test from another) both passed the check and
    # left their stores side by side
    with contextlib.nullcontext() if is_url(args.out) else _out_lock(args.out):
        return _write_splits(args, parts, written, ext, t0)


def _check_arguments(args: argparse.Namespace) -> None:
    """Refuse what is wrong in the arguments alone, before SRC is listed: a wrong --size,
    --valid or --seed was said only after a long listing (and its warnings), --seed -1
    after "writing train.zarr.zip" was printed."""
    if len(args.size) not in (2, 3) or any(v < 1 for v in args.size):
        raise ValueError(
            f"--size {' '.join(map(str, args.size))}: give H W (images) or D H W (volumes), "
            "each a positive whole number"
        )
    for flag, v in (("--valid", args.valid), ("--test", args.test)):
        if v is not None and not (math.isfinite(v) and 0 <= v < 1):
            raise ValueError(f"{flag} {v} is not a fraction from 0 to below 1; give e.g. 0.1")
    if args.seed < 0:
        raise ValueError(f"--seed {args.seed}: give a whole number, 0 or more")
    check_scheduler(args.scheduler)


@contextlib.contextmanager
def _out_lock(out: str) -> Iterator[None]:
    """The lock of OUT for a whole ingest: ``<OUT>.lock`` beside it, or, where OUT's parent
    cannot be written (OUT made for this user in a folder that is not theirs), a hidden
    ``.daskimg-ingest.lock`` inside it."""
    from ..store.location import write_lock

    path = os.path.abspath(out).rstrip(os.sep) or os.sep
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    if not os.access(parent, os.W_OK) and os.path.isdir(path):
        path = os.path.join(path, ".daskimg-ingest")
    with write_lock(path):
        yield


def _write_splits(
    args: argparse.Namespace, parts: dict[str, Any], written: set[str], ext: str, t0: float
) -> int:
    """Write the splits of an ingest into OUT, held by this process alone."""
    from ..store.location import Location
    from ..store.splits import REPLACING, SPLIT_NAMES
    from ..store.write import BEFORE_PUBLISH, to_zarr
    from ..storeinfo import info

    opts = args.storage_options
    stale, earlier = _earlier_stores(args.out, [*parts, *SPLIT_NAMES], written, ext, opts)
    if stale and not args.overwrite:
        raise StoreExistsError(
            f"{args.out} holds {', '.join(stale)} from an earlier run, which this run does not "
            f"write (it writes {', '.join(_out(args.out, n + ext) for n in sorted(written))}): "
            "training and evaluating on OUT would mix the two runs. Pass --overwrite to remove "
            "them once this run has written its stores, or write to another OUT"
        )
    # without --overwrite, every split's store there is compared before any is written: one
    # from other files or settings is refused before train is written beside it
    kept = {
        name: _finished_same(part, target, opts if is_url(target) else None, args, name)
        for name, part in parts.items()
        if len(part) and not args.overwrite and (target := _out(args.out, name + ext)) in earlier
    }
    rows = []
    # --overwrite: as this run's first store is published, the earlier run's others go, so
    # that OUT never holds the two runs side by side (a failure or a kill after the first
    # split would leave a new train beside the old valid, sharing images); before that, a
    # run that fails leaves OUT as the earlier run made it (earlier: the stores it replaces)
    with _Mark(args.out, sorted(written), ext) as mark, scheduler(args.scheduler, args.workers):
        for name, part in parts.items():
            if len(part) == 0:
                continue
            target = _out(args.out, name + ext)
            t = time.perf_counter()
            so = opts if is_url(target) else None
            if kept.get(name):
                print(
                    f"kept {target}: complete, written from the same files and settings (not "
                    f"read again: daskimg verify checks every chunk; --overwrite writes it anew)"
                )
            else:
                print(f"writing {target} ({len(part)} samples)")
                gone = [e for e in earlier if e != target] + stale if args.overwrite else []

                removed: list[str] = []

                def remove_earlier(gone: list[str] = gone, removed: list[str] = removed) -> None:
                    # once this store is built, before it is published: a kill between the
                    # two leaves the earlier run's target alone, never the new beside the old
                    for old in gone:
                        Location.of(old, opts if is_url(old) else None).remove()
                        removed.append(old)

                token = BEFORE_PUBLISH.set(remove_earlier if gone else None)
                replacing = REPLACING.set(tuple(gone))  # not compared with the new classes
                before = _identity(target)
                try:
                    to_zarr(
                        part,
                        target,
                        chunks=args.chunk,
                        codec=args.codec,
                        seed=args.seed,
                        split=name,
                        overwrite=args.overwrite,
                        progress=True,
                        storage_options=so,
                    )
                except DecodeError as e:
                    if args.on_error == "skip":
                        raise
                    raise DecodeError(
                        e.path,
                        f"{e.reason}. Pass --on-error skip to leave files that cannot be decoded "
                        "out (each is listed in the store's 'skipped' attribute and here)",
                    ) from None
                except BaseException as e:
                    if removed or _identity(target) != before:
                        # OUT changed (a Ctrl-C right after the store was published, or the
                        # earlier run's stores gone): the mark stays, so that info and
                        # verify call the ingest unfinished (it was removed: OUT held a new
                        # train alone, and info said all was well)
                        mark.published = True
                    if removed:  # the publish itself failed: say what is gone already
                        e.add_note(
                            f"daskimg: the earlier run's {', '.join(removed)} were removed "
                            "before it failed (--overwrite); run the command again to write them"
                        )
                    raise
                finally:
                    BEFORE_PUBLISH.reset(token)
                    REPLACING.reset(replacing)
                mark.published = True
                if args.overwrite:  # the earlier run's others went as this was published
                    earlier, stale = [], []
                    for old in gone:
                        print(f"removed {old}: a store of an earlier run (--overwrite)")
            summary = info(target, storage_options=so)
            img = summary["arrays"]["images"]
            # a kept store was not decoded again: what it left out is on its record
            skipped = (
                [(str(p), str(r)) for p, r in summary["attrs"].get("skipped") or []]
                if kept.get(name)
                else part.skipped
            )
            rows.append(
                (
                    name,
                    summary["attrs"]["num_samples"],
                    len(skipped),
                    summary["file_bytes"],
                    img["ratio"],
                    time.perf_counter() - t,
                    skipped,
                )
            )
    for target in stale:  # only now (or, with --overwrite, after the first store written)
        Location.of(target, opts if is_url(target) else None).remove()
    for target in stale:
        print(f"removed {target}: a store of an earlier run, not a split of this one")
    mark.remove()  # every split written: the ingest is finished
    print("\nsplit      samples  skipped        bytes   ratio    time")
    for name, n, nskip, nbytes, ratio, secs, _ in rows:
        print(f"{name:<9} {n:>8} {nskip:>8} {nbytes:>12} {ratio or 0:>6.2f}x {secs:>6.1f}s")
    for name, *_, skipped in rows:
        for path, why in skipped:
            print(f"skipped ({name}): {path}: {why}")
    print(f"done in {time.perf_counter() - t0:.1f}s")
    return 0


#: in a local OUT while an ingest writes its splits (which ones): a kill between two splits
#: left OUT with train alone, which ``info``/``verify OUT/`` passed (exit 0)
INGEST_MARK = ".daskimg-ingest.json"


class _Mark:
    """The record in a local OUT that an ingest writes ``splits`` (:data:`INGEST_MARK`):
    made on entering, removed by :meth:`remove` once every split is written, or on leaving
    with an error (a Ctrl-C) before this run published any store, unless an earlier
    unfinished ingest left one: OUT is then as it was."""

    def __init__(self, out: str, splits: list[str], ext: str) -> None:
        self.path = None if is_url(out) else os.path.join(out, INGEST_MARK)
        self.stores = [s + ext for s in splits]
        self.published = self.earlier = False

    def __enter__(self) -> _Mark:
        if self.path is not None:
            # an earlier ingest's, unfinished: kept if this one stops before publishing
            self.earlier = os.path.exists(self.path)
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with open(self.path + ".tmp", "w") as f:
                json.dump({"stores": self.stores}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(self.path + ".tmp", self.path)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None and not self.published and not self.earlier:
            self.remove()

    def remove(self) -> None:
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)


def _identity(target: str) -> tuple[int, int, int] | None:
    """What tells a local store at ``target`` from another put in its place (device, inode,
    change time), or None when there is none (or it is at a URL, where no mark is kept)."""
    if is_url(target):
        return None
    try:
        st = os.stat(target)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_ctime_ns


def unfinished_ingest(out: str) -> list[str] | None:
    """The stores an ingest into the local folder ``out`` was to write, if it did not
    finish (stopped, or still running); None when no ingest is unfinished there."""
    try:
        with open(os.path.join(out, INGEST_MARK)) as f:
            return [str(s) for s in json.load(f)["stores"]]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return []  # a mark cut short: the ingest stopped as it began


def _refuse_out_holding_images(src: str, out: str, opts: Any = None) -> None:
    """OUT inside SRC is left out of the set (so its stores are not read as a class on the
    next run); one that holds images already is a class or split folder of SRC (``ingest
    photos photos/cat``), whose images that would drop without a word."""
    from ..read.folder import _hidden, _is_image
    from ..store.splits import SPLIT_NAMES

    stores = {n + e for n in SPLIT_NAMES for e in (".zarr", ".zarr.zip")}
    if not is_url(out):
        _check_out_folder(out)
    image = None
    if is_url(src) or is_url(out):
        image = _url_image_inside(src, out, opts, stores)
    elif os.path.isdir(out):
        real_src, real_out = os.path.realpath(src), os.path.realpath(out)
        inside = real_out == real_src or real_out.startswith(real_src.rstrip(os.sep) + os.sep)
        # stores there: an earlier run's OUT (a picture saved there since is no part of the set)
        if inside and not stores & set(os.listdir(out)):
            for folder, dirs, files in os.walk(out):
                dirs[:] = [d for d in dirs if not _hidden(d)]  # folders from_folder never reads
                images = [f for f in files if _is_image(f)]  # as from_folder tells an image
                if images:
                    image = os.path.join(folder, images[0])
                    break
    if image is not None:
        raise ValueError(
            f"OUT {out!r} is inside SRC {src!r} and holds images ({image!r}, ...): a class or "
            "split folder of the set, which would be left out of it (stores written inside SRC "
            "are not read on the next run). Write the stores to another folder"
        )


def _check_out_folder(out: str) -> None:
    """OUT, or the nearest part of its path that exists, is a folder (a file there failed
    after the listing, with a bare ``[Errno 17] File exists``)."""
    path = os.path.abspath(out)
    while not os.path.lexists(path):
        path = os.path.dirname(path)
    what = "OUT" if path == os.path.abspath(out) else f"OUT's parent {path!r}"
    if not os.path.exists(path):
        raise ValueError(
            f"{what} is a link to {os.readlink(path)!r}, which does not exist; create that "
            "folder or give another OUT"
        )
    if not os.path.isdir(path):
        raise ValueError(
            f"{what} is a file, not a folder: ingest writes one store per split into the "
            f"folder OUT ({os.path.join(out, 'train.zarr.zip')!r}, ...); give a folder that "
            "does not exist yet or holds earlier stores"
        )


def _url_image_inside(src: str, out: str, opts: Any, stores: set[str]) -> str | None:
    """An image in OUT when OUT is a folder inside SRC on the same object store, else None
    (:func:`_refuse_out_holding_images` for URLs)."""
    from ..read.folder import _hidden, _is_image
    from ..remote import filesystem, protocol_of

    if not (is_url(src) and is_url(out)) or protocol_of(src) != protocol_of(out):
        return None  # one local, one remote (or two stores): never one inside the other
    fs, src_path = filesystem(src, opts)
    _, out_path = filesystem(out, opts)
    base, sub = src_path.rstrip("/"), out_path.rstrip("/")
    if sub != base and not sub.startswith(base + "/"):
        return None
    names = [k[len(sub) + 1 :] for k in fs.find(sub) if k.startswith(sub + "/")]
    if any(n.split("/")[0] in stores for n in names):
        return None  # an earlier run's OUT
    for n in sorted(names):
        parts = n.split("/")
        if not any(_hidden(p) for p in parts[:-1]) and _is_image(parts[-1]):
            return out.rstrip("/") + "/" + n
    return None


def _out(out: str, name: str) -> str:
    return out.rstrip("/") + "/" + name if is_url(out) else os.path.join(out, name)


def _earlier_stores(
    out: str, names: list[str], written: set[str], ext: str, opts: Any
) -> tuple[list[str], list[str]]:
    """Split stores an earlier run left in ``out``, from one look at each: those this run
    does not write (a split now empty or not asked for, or the other format), which would
    otherwise sit beside the new ones, and those it writes again."""
    from ..store.location import Location

    stale: list[str] = []
    again: list[str] = []
    for name in dict.fromkeys(names):
        for e in (".zarr.zip", ".zarr"):
            target = _out(out, name + e)
            if Location.of(target, opts if is_url(target) else None).exists():
                (again if name in written and e == ext else stale).append(target)
    return stale, again


def _store_folders(src: str) -> list[str]:
    """Folders of SRC (or of its split folders) that hold daskimg stores: the OUT of an
    earlier run to another OUT inside SRC, which this run would read as an empty class
    (every label index after it shifted by one), or as a class of the other files put there
    (``daskimg show -o OUT/grid.png``). Logged with those files; local SRC only."""
    from ..store.splits import SPLIT_NAMES

    if is_url(src) or not os.path.isdir(src):
        return []
    ends = (".zarr.zip", ".zarr")
    found: list[str] = []
    others: dict[str, list[str]] = {}  # an OUT's files that are no store
    tops = [src] + [
        os.path.join(src, d)
        for d in os.listdir(src)
        if d.lower() in SPLIT_DIRS and os.path.isdir(os.path.join(src, d))
    ]
    from ..read.folder import _hidden

    for top in tops:
        for entry in sorted(os.scandir(top), key=lambda e: e.name):
            if _hidden(entry.name) or not entry.is_dir():  # lost+found, .git, *.zarr
                continue
            try:
                names = [n for n in os.listdir(entry.path) if not n.startswith(".")]
            except OSError:  # unreadable: the folder reader says so, as before
                continue
            # stores, not files named like one (an empty notes.zarr.zip left a class out)
            kept = [n for n in names if n.endswith(ends) and _is_store(os.path.join(entry.path, n))]
            if not kept:
                continue
            rest = sorted(n for n in names if not n.endswith((*ends, ".lock", ".partial")))
            images = [n for n in rest if os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS]
            out_like = all(n.split(".", 1)[0].lower() in SPLIT_NAMES for n in kept)
            if images and not out_like:
                # a class folder with a store put into it, or an earlier OUT with images:
                # neither leaving its images out nor reading its stores as images is sure
                raise ValueError(
                    f"{entry.path} holds daskimg stores ({', '.join(kept[:4])}) and "
                    f"{len(images)} image(s) ({', '.join(images[:4])}): a class folder with "
                    "a store put into it, or an earlier ingest's OUT? Move the stores (or the "
                    "images) out of SRC, then run again"
                )
            found.append(entry.path)
            others[entry.path] = rest
    for folder in found:
        rest = others[folder]
        logger.warning(
            "left out %s: it holds daskimg stores (an earlier ingest's OUT), no class%s",
            folder,
            f"; with it, {len(rest)} other file(s) there: {', '.join(rest[:8])}"
            + (", ..." if len(rest) > 8 else "")
            if rest
            else "",
        )
    return found


def _is_store(path: str) -> bool:
    """Whether ``path`` is a Zarr store (a folder or zip with a root ``zarr.json``), not just
    named like one."""
    import zipfile

    if os.path.isdir(path):
        return os.path.isfile(os.path.join(path, "zarr.json"))
    try:
        with zipfile.ZipFile(path) as z:
            return "zarr.json" in z.namelist()
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        return False


def _finished_same(part: Any, target: str, so: Any, args: argparse.Namespace, split: str) -> bool:
    """True if the store at ``target`` (there) is complete and was written from the same files
    and settings (a re-run after a kill keeps it); a different store there is refused unless
    ``--overwrite``."""
    from ..store.open import read_attrs
    from ..store.write import fingerprint

    try:
        attrs = read_attrs(target, storage_options=so)
    except IncompleteStoreError:
        return False  # unfinished (a kill): to_zarr replaces it
    except DaskImgError as e:  # damaged: said as such (to_zarr's refusal said only "exists")
        raise StoreExistsError(
            f"{target} exists but cannot be read ({e}); pass --overwrite to replace it"
        ) from None
    want = fingerprint(
        part, codec=args.codec, chunks=args.chunk, shard_chunks=None, order="shuffled",
        seed=args.seed, split=split,
    )  # fmt: skip
    if (attrs.get("source") or {}).get("fingerprint") == want:
        return True
    try:  # which files it holds, for the message (a refusal: read once, then done)
        from ..store.open import open_zarr

        held = open_zarr(target, storage_options=so).paths
    except Exception:
        held = None
    from ..store.splits import renamed

    swapped = renamed(target, attrs)
    raise StoreExistsError(
        f"{target} exists and was written from other files or settings"
        + (
            f" ({swapped}; or pass --overwrite to write every split anew)"
            if swapped is not None
            else f"{_what_differs(attrs, part, args, held)}; pass --overwrite to replace it "
            "(or write to another OUT)"
        )
    )


def _what_differs(
    attrs: Mapping[str, Any], part: Any, args: argparse.Namespace, held: Any = None
) -> str:
    """What the store's attributes show changed since it was written (its classes, its
    files — ``held``, its paths, if read —, size, codec, seed), for the refusal; the files
    alone (a new image under an old name) show only in the fingerprint."""
    from ..store.codecs import DEFAULT_CODEC, canonical_codec

    said = []
    then, now = list(attrs.get("classes") or []), list(part.classes or [])
    if then != now:
        moved = []
        for word, names in (("added", set(now) - set(then)), ("gone", set(then) - set(now))):
            if names:
                shown = sorted(names)
                moved.append(f"{word} {shown[:5]}{' ...' if len(shown) > 5 else ''}")
        said.append("classes " + ("; ".join(moved) or "in another order"))
    files = int(attrs.get("num_samples") or 0) + len(attrs.get("skipped") or [])
    if held is not None and part.paths is not None:
        # a file added to SRC may leave this split's count as it was (an image more in
        # train, one fewer here): "the same number of files" pointed away from it
        skipped = {str(p) for p, _ in attrs.get("skipped") or []}  # left out: no row
        then_files = {str(p) for p in held}
        now_files = {
            str(p)
            for p in part.paths
            if str(p) not in skipped and os.path.join(str(part.root or ""), str(p)) not in skipped
        }
        left = then_files - now_files
        # a file still there but in another split now: the fractions (or --exclude) changed,
        # not the files ("files gone" sent users looking for files they still had)
        elsewhere = {p for p in left if os.path.isfile(os.path.join(str(part.root or ""), p))}
        for word, names in (
            ("added here", now_files - then_files),
            (
                "still in SRC but no longer in this split (the split of SRC changed: other "
                "--valid/--test fractions, --seed or --exclude, or files added or removed "
                "elsewhere?)",
                elsewhere,
            ),
            ("gone", left - elsewhere),
        ):
            if names:
                shown = sorted(names)
                said.append(f"files {word}: {shown[:3]}{' ...' if len(shown) > 3 else ''}")
    elif files != len(part):
        said.append(f"{files} files then, {len(part)} now")
    size = (attrs.get("source") or {}).get("size")
    if size is not None and list(size) != list(args.size):
        said.append(f"size {list(size)} then, {list(args.size)} now")
    codec = canonical_codec(args.codec or DEFAULT_CODEC)
    if attrs.get("codec") not in (None, codec):
        said.append(f"codec {attrs['codec']} then, {codec} now")
    if attrs.get("seed") != args.seed:
        said.append(f"seed {attrs.get('seed')} then, {args.seed} now")
    if said:
        return f" ({'; '.join(said)})"
    return (
        " (the same classes, "
        + ("files" if held is not None else "number of files")
        + ", size, codec and seed: the files themselves, their sizes or times, files of "
        "other splits, or another setting changed)"
    )


def convert(args: argparse.Namespace) -> int:
    from ..store.convert import convert
    from ..storeinfo import format_info, info

    t = time.perf_counter()
    with scheduler(args.scheduler):
        path = convert(
            args.src,
            args.out,
            images=args.images,
            labels=args.labels,
            classes=args.classes,
            columns=[c for c in args.columns.split(",") if c],
            boxes=[b for b in args.boxes.split(",") if b],
            chunks=args.chunk,
            codec=args.codec,
            order=args.order,
            seed=args.seed,
            split=args.split,
            overwrite=args.overwrite,
            progress=True,
            check_layout=args.check_layout,
        )
    print(format_info(info(path)))
    print(f"done in {time.perf_counter() - t:.1f}s")
    return 0
