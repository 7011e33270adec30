"""Write back: extract features with a CNN, stream them to disk, train a linear head on them.

Builds a small photo library (scikit-image's bundled photos, nothing is downloaded),
stores it as one Zarr file per split, runs a small randomly initialised CNN over every
image batch by batch, streams the features — with each sample's label and id — into
``train-features.zarr.zip`` and ``valid-features.zarr.zip`` with
:class:`daskimg.ArrayWriter`, then trains a linear head on the saved features with
:class:`daskimg.BatchIterator` and prints its accuracy on the validation split.

    python examples/features.py --out features-out
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import daskimg as di

SIZE = 64  # pixels: images are decoded to SIZE x SIZE


def make_cnn(seed: int) -> nn.Module:
    """A small CNN with random weights: pooled responses of random filters (no download)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 32, 5, stride=2, padding=2),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(64, 128, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    ).eval()


def extract(cnn: nn.Module, store: Path, out: Path, classes: tuple[str, ...]) -> int:
    """Stream the CNN's features of every image in ``store`` into ``out``; return the count."""
    arrays = {"features": ((128,), "float32"), "labels": ((), "int64"), "ids": ((), "int64")}
    it = di.BatchIterator(store, batch_size=64, shuffle=False)  # store order: ids = row numbers
    with di.ArrayWriter(out, arrays=arrays, classes=classes, overwrite=True) as w, torch.no_grad():
        for images, labels in it:
            x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
            ids = np.arange(len(w), len(w) + len(images))
            w.append(features=cnn(x), labels=labels, ids=ids)  # a tensor goes in as is
        return len(w)


def main(
    out_dir: str | Path,
    *,
    per_class: int = 40,
    epochs: int = 30,
    seed: int = 0,
    quiet: bool = False,
) -> float:
    """Run the whole example in ``out_dir``; return the validation accuracy of the head."""
    say = (lambda *a: None) if quiet else print
    out = Path(out_dir)
    t0 = time.perf_counter()
    src = out / "photos"
    shutil.rmtree(src, ignore_errors=True)
    di.testing.make_photo_folder(src, n_per_class=per_class, size=(96, 96), seed=seed)
    ds = di.from_folder(src, size=(SIZE, SIZE))
    stores = out / "stores"
    splits = ds.split({"train": 0.75, "valid": 0.25}, seed=seed)
    for name, part in splits.items():
        di.to_zarr(part, stores / f"{name}.zarr.zip", split=name, seed=seed, overwrite=True)
    say(f"stored {len(ds)} images of {len(ds.classes)} classes ({time.perf_counter() - t0:.1f}s)")

    t = time.perf_counter()
    cnn = make_cnn(seed)
    for name in splits:
        n = extract(
            cnn, stores / f"{name}.zarr.zip", stores / f"{name}-features.zarr.zip", ds.classes
        )
        say(f"wrote {n} feature vectors to {name}-features.zarr.zip")
    say(f"feature extraction: {time.perf_counter() - t:.1f}s")

    # the saved features are a lazy dask array: standardise with statistics computed from disk
    train = di.open_zarr(stores / "train-features.zarr.zip")
    feats = train.arrays["features"]
    mean = torch.from_numpy(feats.mean(axis=0).compute())
    std = torch.from_numpy(feats.std(axis=0).compute()) + 1e-6

    t = time.perf_counter()
    torch.manual_seed(seed)
    head = nn.Linear(128, len(train.classes))
    opt = torch.optim.Adam(head.parameters(), lr=0.01)
    it = di.BatchIterator(
        stores / "train-features.zarr.zip", batch_size=32, seed=seed, arrays=("features", "labels")
    )
    for epoch in range(epochs):
        it.set_epoch(epoch)
        for f, y in it:
            loss = nn.functional.cross_entropy(
                head((torch.from_numpy(f) - mean) / std), torch.from_numpy(y)
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    valid = di.open_zarr(stores / "valid-features.zarr.zip")
    with torch.no_grad():
        x = (torch.from_numpy(valid.arrays["features"].compute()) - mean) / std
        predicted = head(x).argmax(1).numpy()
    accuracy = float((predicted == valid.labels).mean())
    say(
        f"linear head, {epochs} epochs ({time.perf_counter() - t:.1f}s): validation accuracy "
        f"{accuracy:.1%} on {len(valid)} images (chance {1 / len(valid.classes):.1%})"
    )
    say(f"total {time.perf_counter() - t0:.1f}s")
    return accuracy


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("features-out"))
    parser.add_argument("--per-class", type=int, default=40, help="JPEGs per class")
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(2)
    main(args.out, per_class=args.per_class, epochs=args.epochs)
