"""Convert: ``daskimg convert`` from HDF5, shuffled order against source order.

N = 1,000 photos (224x224x3 uint8, decoded once from the cached JPEG library) are
written to HDF5 files in the layouts found in the wild, then converted to a
``*.zarr.zip`` store with ``order="source"`` and with ``order="shuffled"`` (the default).
The shuffled write reads the same rows in a random order; the issue's yardstick is that
it stays within 1.5x of the source-order time. Methods run round-robin ``--reps`` times
(median shown) in this process, on the threaded scheduler.

HDF5 layouts:

- ``lzf auto``: ``compression="lzf"`` with h5py's own chunk shape (many images share a
  chunk, each image spans many chunks), the layout of a plain ``create_dataset(data=x,
  compression="lzf")``;
- ``lzf 1/chunk``: one image per chunk;
- ``contiguous``: no chunks, no compression.

    python bench/bench_convert.py            # ~1-2 minutes
    python bench/bench_convert.py --quick    # 300 images, one repetition
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    CACHE,
    TARGET,
    base_parser,
    fmt,
    list_photos,
    machine,
    median,
    photo_folder,
    print_table,
    timer,
)

import daskimg as di
from daskimg.store.convert import convert

LAYOUTS = {
    "lzf auto": {"compression": "lzf", "chunks": True},
    "lzf 1/chunk": {"compression": "lzf", "chunks": (1, *TARGET, 3)},
    "contiguous": {},
}


def pixels(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` decoded photos (N, 224, 224, 3) and their labels, cached as .npy."""
    path = CACHE / f"convert-{n}.npz"
    if path.is_file():
        with np.load(path) as z:
            return z["images"], z["labels"]
    paths, labels = list_photos(photo_folder(n))
    images = di.imread(paths, size=TARGET).compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=images, labels=np.asarray(labels))
    return images, np.asarray(labels)


def write_h5(path: Path, images: np.ndarray, labels: np.ndarray, layout: dict) -> str:
    import h5py

    with h5py.File(path, "w") as f:
        d = f.create_dataset("images", data=images, **layout)
        f.create_dataset("labels", data=labels)
        return f"chunks {d.chunks}" if d.chunks else "contiguous"


def main() -> None:
    p = base_parser(__doc__)
    p.add_argument("--reps", type=int, default=3, help="round-robin repetitions (median shown)")
    args = p.parse_args()
    n = args.n or (300 if args.quick else 1000)
    reps = 1 if args.quick else args.reps
    print(machine())
    images, labels = pixels(n)
    print(f"{n} images {images.shape[1:]} {images.dtype}, {images.nbytes / 2**20:.0f} MiB")
    work = Path(tempfile.mkdtemp(prefix="bench-convert-"))
    rows = []
    try:
        for name, layout in LAYOUTS.items():
            src = work / f"{name.replace(' ', '_').replace('/', '_')}.h5"
            how = write_h5(src, images, labels, layout)
            times: dict[str, list[float]] = {"source": [], "shuffled": []}
            for _ in range(reps):
                for order in ("source", "shuffled"):
                    out = work / f"out-{order}.zarr.zip"
                    with timer() as t:
                        convert(src, out, labels="labels", order=order, overwrite=True)
                    times[order].append(t[0])
                    if order == "shuffled":
                        check = di.open_zarr(out)
                        perm = np.random.default_rng(0).permutation(n)
                        got = check.images[:8].compute()
                        assert (got == images[perm[:8]]).all(), "shuffled rows are wrong"
            src_t, shuf_t = median(times["source"]), median(times["shuffled"])
            rows.append(
                [
                    name,
                    how,
                    fmt(src_t, ".2f"),
                    fmt(shuf_t, ".2f"),
                    fmt(n / shuf_t, ".0f"),
                    fmt(shuf_t / src_t, ".2f"),
                ]
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(
        f"\nconvert HDF5 -> .zarr.zip, {n} images, median of {reps}",
        ["HDF5 layout", "", "source s", "shuffled s", "shuffled img/s", "shuffled/source"],
        rows,
    )


if __name__ == "__main__":
    main()
