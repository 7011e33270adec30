"""URL stores: daskimg's checked reader over ranged requests, against plain ranged GETs, same run.

N photos (default 2,000; 8 classes of ~500x375 JPEGs) are stored at 224x224x3 with codec
lz4 and jpeg:75, as a ``.zarr.zip`` and a ``.zarr`` folder, cached. The script then starts,
on 127.0.0.1 only, and stops at its end:

* nginx (Debian's ``nginx-light``; a minimal generated config in a temporary prefix) serving
  the cache folder: ``http://127.0.0.1:PORT/lz4.zarr.zip``;
* moto's ``ThreadedMotoServer`` (port 0, dummy credentials) in a child process (so the
  server does not share this process's GIL: a real S3 endpoint is not in the client's
  process either); the stores are uploaded to ``s3://bench/``.

For each target (nginx zip, S3 zip, S3 folder) x codec, interleaved over ``--reps`` rounds,
medians reported:

* **GET limit**: T threads, each with one keep-alive ``http.client`` connection, fetch the
  images chunks (the same byte ranges the reader reads) in the loader's order for epoch 0
  (``BatchIterator(...).plan()``), into a preallocated buffer; nothing decoded. For S3 the
  requests are plain unsigned path-style GETs (moto does not check signatures).
* **GET + decode**: the same plain GETs, each chunk then checked and decoded by daskimg's
  reader (a ``StoreReader`` over a plain-GET byte source): the least any checked loader
  must do. For JPEG chunks the decode, not the transfer, is the limit.
* **reader**: ``open_store(url).reader.read_chunk("images", c)`` from T threads in the same
  order: daskimg's reader with its fsspec byte source.
* **BatchIterator(url)**: ``BatchIterator(url, batch_size=64, shuffle=True, seed=0)`` as the
  feed builds it today (for a URL: dask blocks over the same reader), threads=2.
* **BatchIterator, reader fed**: the same, with the feed reading chunks through
  ``ImageSet.store.reader`` (the change proposed for ``daskimg/feed/source.py``; patched in
  here, the feed is not edited) and ``threads=T``.

Columns: samples/s (median and range), its ratio to the GET limit and to GET + decode; the
CPU time per chunk of this process (the client) and of the server (nginx's or moto's
processes); and "/ GET by cpu", the GET limit's client + server CPU per chunk over the
method's: the ratio of rates where the CPU is what limits (loopback has no wire, so every
byte moved costs CPU at both ends), and far less noisy than rates on a machine that others
load. Decoding an lz4 chunk costs about as much CPU as moving it over loopback, so no
decoding loader gets near the GET limit there; JPEG decoding costs ~20x the transfer.

    python bench/bench_url.py              # ~4-5 minutes (+~2 minutes the first time: stores)
    python bench/bench_url.py --quick      # ~1.5 minutes
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CACHE, TARGET, base_parser, machine, median, photo_folder, print_table

import daskimg as di
from daskimg.store.bytesource import ByteSource
from daskimg.store.reader import StoreReader

BATCH = 64
CODECS = {"lz4": "lz4", "jpeg75": "jpeg:75"}
BUCKET = "bench"
#: dummy credentials: nothing here may reach a real endpoint
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


# --- inputs ------------------------------------------------------------------------------


def store_key() -> str:
    """A short hash of the modules that decide what a store holds (rebuilt when they change)."""
    import hashlib

    pkg = Path(di.__file__).parent / "store"
    h = hashlib.sha1(di.__version__.encode())
    for name in ("write.py", "format.py", "codecs.py", "jpeg.py", "layout.py"):
        f = pkg / name
        if f.is_file():
            h.update(f.read_bytes())
    return h.hexdigest()[:10]


def build_stores(n: int, *, rebuild: bool = False) -> Path:
    """``lz4`` and ``jpeg75`` stores of ``n`` photos, each as ``.zarr.zip`` and ``.zarr``."""
    root = CACHE / "url"
    out = root / f"n{n}-{store_key()}"
    if (out / ".done").is_file() and not rebuild:
        return out
    for old in root.glob(f"n{n}-*"):
        shutil.rmtree(old, ignore_errors=True)
    out.mkdir(parents=True)
    t = time.perf_counter()
    print(f"[setup] building stores for {n} samples in {out} ...", file=sys.stderr, flush=True)
    ds = di.from_folder(photo_folder(n), size=TARGET)
    for name, codec in CODECS.items():
        di.to_zarr(ds, out / f"{name}.zarr.zip", codec=codec)
        di.to_zarr(ds, out / f"{name}.zarr", codec=codec)
    (out / ".done").write_text("")
    print(f"[setup] done in {time.perf_counter() - t:.0f}s", file=sys.stderr, flush=True)
    return out


# --- servers -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[Any], what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            detail = log.read_text()[-2000:] if log is not None and log.is_file() else ""
            raise RuntimeError(f"{what} exited ({proc.returncode}) at start:\n{detail}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within 15 s")


def stop(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM) -> None:
    """Stop a server this script started (by its handle), killing it if it lingers."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` and its children."""
    import psutil

    proc = psutil.Process(pid)
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};{limit}
    }}
}}
"""


@contextlib.contextmanager
def nginx(root: Path, rate: str | None = None) -> Iterator[tuple[str, int]]:
    """nginx serving ``root`` on 127.0.0.1; yields its base URL and pid. Stopped (and its
    prefix removed) at exit."""
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(exe):
        raise FileNotFoundError("nginx is not installed (Debian: apt-get install -y nginx-light)")
    prefix = Path(tempfile.mkdtemp(prefix="daskimg-nginx-"))
    proc = None
    try:
        port = free_port()
        conf = prefix / "nginx.conf"
        limit = f"\n        limit_rate {rate};" if rate else ""  # bytes/s per connection, like S3's
        conf.write_text(NGINX_CONF.format(prefix=prefix, port=port, root=root, limit=limit))
        log = prefix / "error.log"
        proc = subprocess.Popen(
            [exe, "-p", str(prefix), "-c", str(conf), "-e", str(log)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        wait_port(port, proc, "nginx", log)
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        if proc is not None:
            stop(proc, signal.SIGQUIT)  # graceful: the master stops its workers
        shutil.rmtree(prefix, ignore_errors=True)


MOTO_CHILD = textwrap.dedent(
    """
    import logging, sys
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    from moto.server import ThreadedMotoServer
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    assert host == "127.0.0.1", host
    print(port, flush=True)
    sys.stdin.read()  # until the parent closes stdin (or dies)
    server.stop()
    """
)


@contextlib.contextmanager
def moto() -> Iterator[tuple[dict[str, Any], int]]:
    """moto's S3 server on 127.0.0.1 in a child process; yields s3fs ``storage_options`` and
    its pid."""
    env = {**os.environ, **AWS_ENV, "MOTO_S3_DEFAULT_KEY_BUFFER_SIZE": str(2**31)}
    env.pop("AWS_PROFILE", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", MOTO_CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.strip().isdigit():
            raise RuntimeError(f"moto did not start (it printed {line!r})")
        port = int(line)
        wait_port(port, proc, "moto")
        endpoint = f"http://127.0.0.1:{port}"
        os.environ["AWS_ENDPOINT_URL"] = endpoint  # a call that forgets the options goes here too
        options = {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": endpoint},
        }
        yield options, proc.pid
    finally:
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            stop(proc)


def upload(stores: Path, options: dict[str, Any]) -> None:
    """Put every cached store into ``s3://bench/`` (a zip as one object, a folder's root last)."""
    import fsspec

    from daskimg.store.location import Location

    fs = fsspec.filesystem("s3", **options)
    if not fs.exists(BUCKET):
        fs.mkdir(BUCKET)
    for name in CODECS:
        for ext in (".zarr.zip", ".zarr"):
            Location.of(f"s3://{BUCKET}/{name}{ext}", options).upload(str(stores / f"{name}{ext}"))


# --- what every method reads -------------------------------------------------------------


class Target:
    """One store at one URL: its options, plain-GET URLs of its keys, the loader's chunk order."""

    def __init__(
        self,
        label: str,
        url: str,
        options: dict[str, Any],
        local: Path,
        plain: str,
        share: int,
        server: int,
    ) -> None:
        self.label, self.url, self.options, self.local = label, url, options, local
        self.server = server  # pid of the server process
        self.plain = plain  # plain http:// URL of the object (zip) or folder
        self.share = share  # consumer 0 of `share` (a DDP rank's part of an epoch)
        it = di.BatchIterator(str(local), **self.feed_kwargs())
        self.order = [int(c) for g in it.plan().groups for c in g]  # the loader's epoch-0 order
        it.close()
        reader = StoreReader(str(local))
        self.lay = reader.layout("images")
        self.n = sum(self.lay.chunk_rows(c)[1] - self.lay.chunk_rows(c)[0] for c in self.order)
        # (plain URL, start, length) of every images chunk, from the local copy of the same bytes
        self.ranges = []
        for c in self.order:
            file, offset, nbytes = reader.chunk_location("images", c)
            rel = os.path.relpath(file, local)
            target = plain if rel == "." else f"{plain}/{Path(rel).as_posix()}"
            self.ranges.append((target, offset, nbytes))
        reader.close()

    def feed_kwargs(self, **kw: Any) -> dict[str, Any]:
        return {"batch_size": BATCH, "shuffle": True, "seed": 0, "num_consumers": self.share, **kw}

    def iterator(self, **kw: Any) -> Any:
        return di.BatchIterator(self.url, storage_options=self.options, **self.feed_kwargs(**kw))


#: moto routes a request by the service named in its Authorization header and does not check
#: the signature: plain GETs carry this dummy one (signing, ~0.1 ms a request, is left out)
AUTH = {
    "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20250101/us-east-1/s3/aws4_request, "
    "SignedHeaders=host;range, Signature=0"
}


class _Conns(threading.local):
    def __init__(self) -> None:
        self.conns: dict[tuple[str, int], http.client.HTTPConnection] = {}


_CONNS = _Conns()


def plain_get(url: str, start: int, views: Sequence[memoryview]) -> None:
    """A plain ranged GET of ``url`` into ``views`` (in order), on this thread's keep-alive connection."""
    u = urllib.parse.urlsplit(url)
    where = (u.hostname or "", u.port or 80)
    n = sum(len(v) for v in views)
    for attempt in range(2):
        conn = _CONNS.conns.get(where)
        if conn is None:
            conn = _CONNS.conns[where] = http.client.HTTPConnection(*where, timeout=60)
        try:
            conn.request("GET", u.path, headers={"Range": f"bytes={start}-{start + n - 1}", **AUTH})
            resp = conn.getresponse()
            if resp.status != 206:
                raise RuntimeError(f"GET {url} bytes {start}+{n}: HTTP {resp.status}")
            for v in views:
                got = 0
                while got < len(v):
                    k = resp.readinto(v[got:])
                    if not k:
                        raise RuntimeError(f"GET {url}: short read")
                    got += k
            resp.read()
            return
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            conn.close()
            del _CONNS.conns[where]
            if attempt:
                raise


class PlainSource(ByteSource):
    """A store's bytes fetched with :func:`plain_get`: daskimg's reader without fsspec."""

    def __init__(self, where: str, keys: dict[str, int], locate: Callable[[str], tuple[str, int]]):
        self.where, self.keys, self.locate = where, keys, locate

    def _read(self, key: str, start: int, n: int) -> bytes:
        buf = bytearray(n)
        self.readinto(key, start, [buf])
        return bytes(buf)

    def readinto(self, key: str, start: int, buffers: Sequence[Any]) -> None:
        url, offset = self.locate(key)
        plain_get(url, offset + start, [memoryview(b).cast("B") for b in buffers])


def plain_reader(t: Target, reader: StoreReader) -> StoreReader:
    """A reader over the same keys as ``reader`` whose bytes come from plain GETs."""
    remote = reader.source
    members = getattr(remote, "members", None)
    if members is not None:  # a zip: one object, members at offsets

        def locate(key: str) -> tuple[str, int]:
            return t.plain, members[key][0]

    else:

        def locate(key: str) -> tuple[str, int]:
            return f"{t.plain}/{key}", 0

    return StoreReader(PlainSource(t.url, dict(remote.keys), locate))


# --- methods: each returns samples read ---------------------------------------------------


def in_order(threads: int, items: Sequence[Any], work: Callable[[Any], None]) -> None:
    """``work(item)`` for every item, ``threads`` at a time, started in order (like the loader's pool)."""
    with ThreadPoolExecutor(threads) as ex:
        for f in [ex.submit(work, x) for x in items]:
            f.result()


def m_limit(t: Target, threads: int) -> int:
    big = max(nb for _, _, nb in t.ranges)
    bufs = threading.local()

    def work(r: tuple[str, int, int]) -> None:
        buf = getattr(bufs, "buf", None)
        if buf is None:
            buf = bufs.buf = memoryview(np.empty(big, dtype=np.uint8)).cast("B")
        url, start, nb = r
        plain_get(url, start, [buf[:nb]])

    in_order(threads, t.ranges, work)
    return t.n


def read_all(reader: StoreReader, t: Target, threads: int) -> int:
    lay = t.lay
    outs = threading.local()

    def work(c: int) -> None:
        out = getattr(outs, "out", None)
        if out is None:
            out = outs.out = np.empty((lay.chunk_len, *lay.shape[1:]), dtype=lay.dtype)
        a, b = lay.chunk_rows(c)
        reader.read_chunk("images", c, out[: b - a])

    in_order(threads, t.order, work)
    return t.n


def epoch(it: Any, t: Target) -> int:
    n = sum(len(b[0]) for b in it)
    assert n == t.n, (n, t.n)
    return n


def reader_fed(it: Any, reader: StoreReader) -> bool:
    """Make a BatchIterator over a URL read chunks with ``reader`` (what the feed should do
    itself). False where the feed's internals differ from what this patch expects."""
    src = getattr(it, "source", None)
    if src is None or not all(hasattr(src, a) for a in ("reader", "lazy", "fast", "per_sample")):
        return False
    src.reader = reader
    src.fast = {n for n in src.lazy if reader.layout(n).chunk_len == src.chunk_len}
    src.per_sample = {n for n in src.fast if reader.layout(n).per_sample}
    return True


# --- driver ------------------------------------------------------------------------------


def main() -> None:
    p = base_parser(__doc__)
    p.add_argument("--reps", type=int, default=None, help="interleaved rounds (default 5, quick 3)")
    p.add_argument(
        "--threads",
        default="2,8",
        help="comma-separated thread counts T of the GET limit, the reader and the reader-fed "
        "loader (default 2,8; BatchIterator as is uses its default, 2)",
    )
    p.add_argument(
        "--s3-share",
        type=int,
        default=2,
        help="on S3, measure consumer 0 of this many (a DDP rank's share of an epoch; default 2): "
        "moto copies the whole object for every ranged GET, so S3 epochs are slow",
    )
    p.add_argument(
        "--only",
        nargs="+",
        choices=["nginx-zip", "s3-zip", "s3-dir"],
        default=None,
        help="run only these targets",
    )
    p.add_argument("--codecs", nargs="+", choices=list(CODECS), default=list(CODECS))
    p.add_argument(
        "--nginx-rate",
        default=None,
        help="cap nginx's bytes/s per connection (its limit_rate, e.g. 50m), as object storage "
        "caps a connection: then requests in flight, not CPU, set the rate",
    )
    p.add_argument("--rebuild", action="store_true", help="rebuild the cached stores")
    a = p.parse_args()
    if a.cold:
        p.error("--cold does not apply: the servers read from their page cache")
    n = a.n or (1000 if a.quick else 2000)
    reps = a.reps or (3 if a.quick else 5)
    threads = sorted({int(x) for x in a.threads.split(",")})
    only = a.only or ["nginx-zip", "s3-zip", "s3-dir"]
    stores = build_stores(n, rebuild=a.rebuild)
    os.environ.update(AWS_ENV)
    os.environ.pop("AWS_PROFILE", None)
    print(
        f"bench_url: {machine()}; {n} samples of {TARGET[0]}x{TARGET[1]}x3, batch {BATCH}, "
        f"{reps} interleaved rounds, threads {threads}; S3: consumer 0 of {a.s3_share}"
        + (f"; nginx limit_rate {a.nginx_rate}" if a.nginx_rate else "")
    )
    t0 = time.perf_counter()
    rows: list[list[str]] = []
    opens: list[list[str]] = []
    with contextlib.ExitStack() as stack:
        targets: list[Target] = []
        if "nginx-zip" in only:
            base, pid = stack.enter_context(nginx(stores, a.nginx_rate))
            for name in a.codecs:
                url = f"{base}/{name}.zarr.zip"
                local = stores / f"{name}.zarr.zip"
                targets.append(Target(f"nginx zip {name}", url, {}, local, url, 1, pid))
        if {"s3-zip", "s3-dir"} & set(only):
            options, moto_pid = stack.enter_context(moto())
            upload(stores, options)
            endpoint = options["client_kwargs"]["endpoint_url"]
            for name in a.codecs:
                for kind, ext in (("s3-zip", ".zarr.zip"), ("s3-dir", ".zarr")):
                    if kind in only:
                        label = f"{kind.replace('-', ' ')} {name}"
                        url = f"s3://{BUCKET}/{name}{ext}"
                        plain = f"{endpoint}/{BUCKET}/{name}{ext}"
                        local = stores / f"{name}{ext}"
                        targets.append(
                            Target(label, url, options, local, plain, a.s3_share, moto_pid)
                        )
        print(f"[setup] servers up ({time.perf_counter() - t0:.0f}s)", file=sys.stderr, flush=True)
        for t in targets:
            got, opened = run_target(t, threads, reps)
            rows += got
            opens.append(opened)
            print_table(
                f"\n{t.label} ({time.perf_counter() - t0:.0f}s)", HEADER, got, file=sys.stderr
            )
    print_table(
        f"\nURL stores: images chunks of {n} samples in the loader's order (epoch 0; S3: consumer "
        f"0 of {a.s3_share}), samples/s, medians of {reps} interleaved rounds",
        HEADER,
        rows,
    )
    print_table(
        "\nopening: BatchIterator(url) and open_zarr(url), seconds",
        ["target", "BatchIterator(url)", "open_zarr(url)"],
        opens,
    )
    print(f"total {time.perf_counter() - t0:.0f}s")


HEADER = [
    "target",
    "T",
    "method",
    "samples/s",
    "range",
    "/ GET",
    "/ GET+dec",
    "cpu ms/chunk",
    "server",
    "/ GET by cpu",
]


def timed(f: Callable[[], int]) -> tuple[float, float, int]:
    c0, w0 = time.process_time(), time.perf_counter()
    samples = f()
    return time.perf_counter() - w0, time.process_time() - c0, samples


def run_target(t: Target, threads: Sequence[int], reps: int) -> tuple[list[list[str]], list[str]]:
    iters: dict[str, Any] = {}
    w0 = time.perf_counter()
    iters["as-is"] = t.iterator()  # opens the store
    w1 = time.perf_counter()
    ds = di.open_zarr(t.url, storage_options=t.options)
    opened = [w1 - w0, time.perf_counter() - w1]
    reader = ds.store.reader
    plain = plain_reader(t, reader)
    for th in threads:
        it = di.BatchIterator(ds, **t.feed_kwargs(threads=th))
        if reader_fed(it, reader):
            iters[f"fed-{th}"] = it
    methods: dict[tuple[int, str], Callable[[], int]] = {}
    for th in threads:
        methods[(th, "GET limit")] = lambda th=th: m_limit(t, th)
        methods[(th, "GET + decode")] = lambda th=th: read_all(plain, t, th)
        methods[(th, "reader")] = lambda th=th: read_all(reader, t, th)
        if f"fed-{th}" in iters:
            methods[(th, "BatchIterator, reader fed")] = lambda th=th: epoch(iters[f"fed-{th}"], t)
    methods[(2, "BatchIterator(url) as is")] = lambda: epoch(iters["as-is"], t)
    if t.share == 1:  # once untimed: connections, shard indexes, thread pools (S3: too slow)
        for f in methods.values():
            f()
    rates: dict[tuple[int, str], list[float]] = {k: [] for k in methods}
    cpu: dict[tuple[int, str], list[float]] = {k: [] for k in methods}
    srv: dict[tuple[int, str], list[float]] = {k: [] for k in methods}
    for _ in range(reps):
        for k, f in methods.items():
            s0 = tree_cpu(t.server)
            wall, used, samples = timed(f)
            srv[k].append((tree_cpu(t.server) - s0) * 1e3 / len(t.order))
            rates[k].append(samples / wall)
            cpu[k].append(used * 1e3 / len(t.order))
    for it in iters.values():
        it.close()
    rows = []
    for th in sorted({k[0] for k in methods}):
        limit = median(rates[(th, "GET limit")]) if (th, "GET limit") in rates else None
        bound = median(rates[(th, "GET + decode")]) if (th, "GET + decode") in rates else None
        # CPU per chunk, client + server: what sets the rate when the CPU is the limit
        # (loopback; a busy machine), and much less noisy than rates under others' load
        spent = {k: median(cpu[k]) + median(srv[k]) for k in methods}
        limit_cpu = spent.get((th, "GET limit"))
        for (kth, name), rs in rates.items():
            if kth != th:
                continue
            r = median(rs)
            rows.append(
                [
                    t.label,
                    str(th),
                    name,
                    f"{r:,.0f}",
                    f"{min(rs):,.0f}-{max(rs):,.0f}",
                    f"{r / limit:.2f}" if limit else "-",
                    f"{r / bound:.2f}" if bound else "-",
                    f"{median(cpu[(kth, name)]):.1f}",
                    f"{median(srv[(kth, name)]):.1f}",
                    f"{limit_cpu / spent[(kth, name)]:.2f}" if limit_cpu else "-",
                ]
            )
    return rows, [t.label, f"{opened[0]:.2f}", f"{opened[1]:.2f}"]


if __name__ == "__main__":
    main()
