from __future__ import annotations

import numpy as np
import pytest
from conftest import plain_group

import daskimg as di
from daskimg.bench import CodecResult, compare_codecs, evict, recommend


def test_compare_codecs_measures_each_codec_on_a_copy(tmp_path):
    di.testing.make_photo_folder(tmp_path / "src", n_per_class=20, classes=("chelsea", "coffee"))
    photos = di.from_folder(tmp_path / "src", size=(32, 32))
    path = di.to_zarr(photos, tmp_path / "s.zarr.zip", chunks=8)
    rows = compare_codecs(path, samples=24, epochs=1, batch_size=8)
    assert [r.codec for r in rows] == ["lz4", "zstd", "none", "jpeg:90", "jpeg:75"]
    stored = plain_group(path)["images"][:24]
    for r in rows:
        assert r.warm > 0 and r.cold > 0
        # the projected size is the whole store's raw size over the measured ratio
        assert r.store_bytes == int(stored[0].nbytes * 40 / r.ratio)
        assert (r.psnr == np.inf) == (not r.codec.startswith("jpeg"))
    q90, q75 = rows[-2:]
    assert 20 < q75.psnr < q90.psnr < 60 and q75.ratio > q90.ratio
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr.zip", "src"]  # copies removed


def test_compare_codecs_leaves_out_jpeg_for_data_it_cannot_hold(tmp_path):
    ds = di.ImageSet(np.zeros((16, 4, 4, 2), np.uint8), np.zeros(16, int), classes=["a"])
    path = di.to_zarr(ds, tmp_path / "two.zarr.zip", chunks=4)
    assert [r.codec for r in compare_codecs(path, samples=8, epochs=1)] == ["lz4", "zstd", "none"]
    with pytest.raises(ValueError, match="jpeg:Q"):  # a typo fails before anything is measured
        compare_codecs(path, samples=8, epochs=1, codecs=["lz4", "jepg"])
    with pytest.raises(ValueError, match=r"JPEG cannot hold.*add lz4, zstd or none"):
        compare_codecs(path, samples=8, epochs=1, codecs=["jpeg", "jpeg:75"])


def _row(codec, ratio, warm, cold, lossy=False, size=10**9):
    return CodecResult(codec, ratio, warm, cold, 38.0 if lossy else float("inf"), size)


ROWS = [
    _row("lz4", 1.1, 20_000, 5_000, size=900),
    _row("zstd", 1.3, 9_000, 4_500, size=760),
    _row("none", 1.0, 30_000, 4_000, size=1000),
    _row("jpeg", 9.0, 7_000, 7_000, lossy=True, size=110),
]


def test_recommend_picks_the_most_faithful_lossy_codec_that_keeps_up():
    rows = [
        *ROWS[:3],
        CodecResult("jpeg:90", 9.0, 7_000, 7_000, 38.0, 110),
        CodecResult("jpeg:75", 14.0, 9_000, 9_000, 35.0, 70),
    ]
    assert recommend(rows, target=6_000, memory=1_000).codec == "jpeg:90"
    assert recommend(rows, target=8_000, memory=1_000).codec == "jpeg:75"


@pytest.mark.parametrize(
    ("target", "memory", "expected", "meets"),
    [
        (None, 10_000, "none", None),  # fits: the fastest warm lossless codec
        (None, 1_000, "lz4", None),  # does not fit: the fastest cold
        (8_000, 10_000, "zstd", True),  # the smallest lossless one fast enough
        (25_000, 10_000, "none", True),
        (4_200, 1_000, "zstd", True),  # cold: zstd 4,500 >= 4,200, and smaller than lz4
        (6_000, 1_000, "jpeg", True),  # cold: no lossless one is fast enough, jpeg is
        (50_000, 10_000, "none", False),  # nothing is: the fastest, and says so
    ],
)
def test_recommend_rules(target, memory, expected, meets):
    rec = recommend(ROWS, target=target, memory=memory)
    assert (rec.codec, rec.meets_target) == (expected, meets)
    assert f'"{expected}"' in rec.text
    if expected == "jpeg":
        assert "lossy" in rec.text


def test_evict_releases_maps_and_the_feed_goes_on(tmp_path, indexed_set):
    path = di.to_zarr(indexed_set, tmp_path / "e.zarr.zip", chunks=8, codec="none")
    it = di.BatchIterator(path, batch_size=10, arrays=("idx",))
    first = sorted(np.concatenate([b[0] for b in it]).tolist())
    assert evict([path]) == (tmp_path / "e.zarr.zip").stat().st_size
    second = sorted(np.concatenate([b[0] for b in it]).tolist())
    assert first == second == list(range(103))


def test_bench_refuses_a_url_with_what_to_do():
    with pytest.raises(ValueError, match="Copy the store to local disk"):
        compare_codecs("s3://bucket/train.zarr.zip")


def test_compare_codecs_calls_a_float_store_with_nan_lossless(tmp_path):
    # scientific volumes mark missing values with NaN; a lossless copy keeps them
    rng = np.random.default_rng(0)
    pixels = rng.random((16, 4, 4, 1), dtype=np.float32)
    pixels[::3, 0, 0, 0] = np.nan
    ds = di.ImageSet(pixels, np.zeros(16, int), classes=["a"])
    path = di.to_zarr(ds, tmp_path / "f.zarr.zip", chunks=4, order="source")
    rows = compare_codecs(path, samples=16, epochs=1, batch_size=4, codecs=["lz4", "none"])
    exact = np.array_equal(plain_group(path)["images"][...], pixels, equal_nan=True)
    assert exact and [r.psnr for r in rows] == [np.inf, np.inf]
    assert "lossy" not in recommend(rows, target=1.0, memory=2**40).text


def test_recommend_never_calls_a_jpeg_codec_lossless():
    # a JPEG copy can match the measured samples exactly (flat images); it stays lossy
    exact_jpeg = CodecResult("jpeg:100", 12.0, 50_000, 50_000, float("inf"), 80)
    rows = [*ROWS[:3], exact_jpeg]
    keeps_up = [r for r in ROWS[:3] if r.warm >= 6_000]
    rec = recommend(rows, target=6_000, memory=10**6)
    assert rec.codec == min(keeps_up, key=lambda r: r.store_bytes).codec
    assert recommend([exact_jpeg, ROWS[0]], memory=10**6).codec == ROWS[0].codec
