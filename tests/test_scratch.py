"""Per-thread scratch buffers (read/scratch.py): reuse never mixes images or threads."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from daskimg.read.decode import DecodeSpec, decode_file
from daskimg.read.scratch import scratch
from daskimg.testing import make_photo_folder


def test_threads_decoding_at_once_get_each_files_own_pixels(tmp_path):
    make_photo_folder(
        tmp_path, n_per_class=6, size=(90, 120), seed=1, classes=("astronaut", "chelsea", "coffee")
    )
    files = sorted(tmp_path.rglob("*.jpg"))
    spec = DecodeSpec(size=(40, 50), draft=False)
    # oracle: Pillow's own decode and BILINEAR resize of each file, one at a time
    expected = [
        np.asarray(Image.open(f).convert("RGB").resize((50, 40), Image.Resampling.BILINEAR))
        for f in files
    ]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda f: decode_file(f, spec), files * 4))
    for i, img in enumerate(got):
        np.testing.assert_array_equal(img, expected[i % len(files)])


def test_a_slot_grows_and_threads_do_not_share():
    small = scratch("t", (3,))
    big = scratch("t", (1000,))
    assert big.size == 1000 and not np.shares_memory(small, big)
    with ThreadPoolExecutor(1) as pool:
        other = pool.submit(scratch, "t", (1000,)).result()
    assert not np.shares_memory(other, big)
