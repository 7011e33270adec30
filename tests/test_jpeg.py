from __future__ import annotations

import io
import pickle
import struct

import numpy as np
import pytest
import zarr
from PIL import Image

import daskimg as di
from daskimg.errors import ChecksumError, FormatVersionError
from daskimg.read.decode import DecodeSpec, decode_file
from daskimg.store.codecs import check_crc
from daskimg.store.jpeg import CODEC_NAME, JpegCodec, decode_chunk_into, encode_chunk, register
from daskimg.store.reader import StoreReader

CHUNK = 5


@pytest.fixture(scope="module", autouse=True)
def _registered():
    register()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """12 real photos (6 scenes) decoded to 96x96 RGB."""
    root = tmp_path_factory.mktemp("photos")
    paths = di.testing.make_photo_folder(root, n_per_class=2, seed=3)
    spec = DecodeSpec((96, 96), channels=3)
    return np.stack([decode_file(p, spec) for p in paths])


def _create(root, data, *, shards=None, quality=90, name="images"):
    group = zarr.open_group(zarr.storage.LocalStore(root), mode="w", zarr_format=3)
    z = group.create_array(
        name,
        shape=data.shape,
        dtype=data.dtype,
        chunks=(CHUNK, *data.shape[1:]),
        shards=None if shards is None else (shards, *data.shape[1:]),
        serializer=JpegCodec(quality=quality),
        compressors=[zarr.codecs.Crc32cCodec()],
        fill_value=0,
    )
    z[:] = data
    return z


def _pillow_roundtrip(images, quality):
    """Pillow's own JPEG encode + decode of each image: the oracle for the loss."""
    out = []
    for image in images:
        mode = "L" if image.shape[-1] == 1 else "RGB"
        buf = io.BytesIO()
        Image.fromarray(image[..., 0] if mode == "L" else image, mode).save(
            buf, format="JPEG", quality=quality
        )
        buf.seek(0)
        with Image.open(buf) as im:
            out.append(np.asarray(im).reshape(image.shape))
    return np.stack(out)


def _psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255**2 / mse)


def _mae(a, b):
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def _assert_loss_like_pillow(original, decoded, quality=90):
    oracle = _pillow_roundtrip(original, quality)
    assert _psnr(original, decoded) >= _psnr(original, oracle) - 0.5
    assert _mae(original, decoded) <= 1.1 * _mae(original, oracle)
    assert _psnr(original, decoded) > 30  # q90 on photos: about 37 dB


@pytest.mark.parametrize("shards", [None, 10])
def test_round_trip_through_zarr(tmp_path, photos, shards):
    # 12 samples in chunks of 5: the last chunk (and shard) is partial
    _create(tmp_path / "s.zarr", photos, shards=shards)
    z = zarr.open_group(tmp_path / "s.zarr", mode="r")["images"]
    back = z[:]
    assert back.shape == photos.shape and back.dtype == np.uint8
    _assert_loss_like_pillow(photos, back)
    np.testing.assert_array_equal(z[10:12], back[10:])  # the partial chunk alone
    codecs = z.metadata.to_dict()["codecs"]
    inner = codecs[0]["configuration"]["codecs"] if shards else codecs
    assert [c["name"] for c in inner] == [CODEC_NAME, "crc32c"]
    assert inner[0]["configuration"] == {"quality": 90}


def test_grayscale_round_trip(tmp_path, photos):
    gray = np.stack([np.asarray(Image.fromarray(p).convert("L"))[..., None] for p in photos])
    z = _create(tmp_path / "g.zarr", gray)
    back = z[:]
    assert back.shape == gray.shape
    _assert_loss_like_pillow(gray, back)


def test_photos_shrink_like_jpeg(photos):
    data = encode_chunk(photos, 90)
    assert photos.nbytes / len(data) > 5  # lossless codecs manage ~1.1-1.4x on photos


def test_lower_quality_is_smaller(photos):
    assert len(encode_chunk(photos, 50)) < len(encode_chunk(photos, 90))


@pytest.mark.parametrize("shards", [None, 10])
def test_decode_chunk_into_equals_zarr(tmp_path, photos, shards):
    path = tmp_path / "s.zarr"
    z = _create(path, photos, shards=shards)
    reader = StoreReader(path)
    for c, (a, b) in enumerate([(0, 5), (5, 10), (10, 12)]):
        file, offset, nbytes = reader.chunk_location("images", c)
        with open(file, "rb") as f:
            f.seek(offset)
            raw = f.read(nbytes)
        out = np.empty((b - a, *photos.shape[1:]), np.uint8)
        decode_chunk_into(check_crc(raw, "test"), out, "test")
        np.testing.assert_array_equal(out, z[a:b])
    reader.close()


def test_partial_chunk_decodes_only_the_real_samples(photos):
    data = encode_chunk(photos[:5], 90)
    full = np.empty((5, *photos.shape[1:]), np.uint8)
    decode_chunk_into(memoryview(data), full, "x")
    head = np.empty((2, *photos.shape[1:]), np.uint8)
    decode_chunk_into(memoryview(data), head, "x")
    np.testing.assert_array_equal(head, full[:2])
    with pytest.raises(ChecksumError, match="holds 5 samples, expected at least 6"):
        decode_chunk_into(memoryview(data), np.empty((6, *photos.shape[1:]), np.uint8), "x")


def test_empty_chunk():
    data = encode_chunk(np.zeros((0, 8, 8, 3), np.uint8), 90)
    assert len(data) == 12
    decode_chunk_into(memoryview(data), np.zeros((0, 8, 8, 3), np.uint8), "x")


def test_layout_is_header_then_jpegs(photos):
    data = encode_chunk(photos[:3], 90)
    magic, version, reserved, n = struct.unpack_from("<4sHHI", data)
    assert (magic, version, reserved, n) == (b"DIJP", 1, 0, 3)
    lengths = struct.unpack_from("<3I", data, 12)
    assert 12 + 12 + sum(lengths) == len(data)
    first = data[24 : 24 + lengths[0]]
    assert first[:2] == b"\xff\xd8" and first[-2:] == b"\xff\xd9"  # SOI ... EOI
    with Image.open(io.BytesIO(first)) as im:  # any JPEG reader can read a sample
        assert im.size == (96, 96)


def _chunk(streams, *, magic=b"DIJP", version=1, n=None):
    n = len(streams) if n is None else n
    head = struct.pack("<4sHHI", magic, version, 0, n)
    return head + struct.pack(f"<{len(streams)}I", *map(len, streams)) + b"".join(streams)


def _streams(photos, k=2):
    data = encode_chunk(photos[:k], 90)
    lengths = struct.unpack_from(f"<{k}I", data, 12)
    out, pos = [], 12 + 4 * k
    for length in lengths:
        out.append(data[pos : pos + length])
        pos += length
    return out


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda s: _chunk([s[0], s[1][: len(s[1]) // 2]]), "sample 1 cannot be decoded"),
        (lambda s: _chunk([s[0], b"\x00" * 300]), "sample 1 cannot be decoded"),
        (lambda s: _chunk(s)[:-1], "its header says"),
        (lambda s: _chunk(s) + b"\x00", "its header says"),
        (lambda s: _chunk(s, magic=b"XXXX"), "not a daskimg.jpeg chunk"),
        (lambda s: _chunk(s)[:10], "too short"),
        (lambda s: _chunk(s, n=100_000), "lists 100000 samples"),
        (lambda s: _chunk(s, n=1) + b"\x00" * 4, "its header says"),
    ],
)
def test_damaged_chunk_raises(photos, damage, match):
    data = damage(_streams(photos))
    out = np.empty((2, *photos.shape[1:]), np.uint8)
    with pytest.raises(ChecksumError, match=match) as info:
        decode_chunk_into(memoryview(data), out, "train.zarr.zip: chunk 7")
    assert "train.zarr.zip: chunk 7" in str(info.value)


def test_wrong_image_size_raises(photos):
    data = memoryview(encode_chunk(photos[:1], 90))  # 96x96
    with pytest.raises(ChecksumError, match="sample 0"):
        decode_chunk_into(data, np.empty((1, 64, 64, 3), np.uint8), "x")
    with pytest.raises(ChecksumError, match="is 96x96, expected 128x128"):
        decode_chunk_into(data, np.empty((1, 128, 128, 3), np.uint8), "x")


def test_newer_format_version_raises(photos):
    data = _chunk(_streams(photos), version=2)
    with pytest.raises(FormatVersionError, match="Upgrade daskimg"):
        decode_chunk_into(memoryview(data), np.empty((2, 96, 96, 3), np.uint8), "x")


def test_corrupt_stored_chunk_raises_checksum_error(tmp_path, photos):
    path = tmp_path / "s.zarr"
    _create(path, photos)
    file, offset, nbytes = StoreReader(path).chunk_location("images", 1)
    with open(file, "r+b") as f:  # flip one bit inside the JPEG data
        f.seek(offset + nbytes // 2)
        byte = f.read(1)
        f.seek(offset + nbytes // 2)
        f.write(bytes([byte[0] ^ 0x10]))
    with open(file, "rb") as f:
        f.seek(offset)
        raw = f.read(nbytes)
    with pytest.raises(ChecksumError, match="checksum mismatch"):
        check_crc(raw, "chunk 1")


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [
        ((4, 16, 16, 3), "float32"),
        ((4, 16, 16, 3), "uint16"),
        ((4, 16, 16), "uint8"),
        ((4, 16, 16, 4), "uint8"),
        ((4, 2, 16, 16, 3), "uint8"),
    ],
)
@pytest.mark.parametrize("shards", [None, 4])
def test_refuses_non_images(shape, dtype, shards):
    with pytest.raises(ValueError, match=r"uint8 images of shape .* Use codec 'lz4'"):
        zarr.create_array(
            zarr.storage.MemoryStore(),
            shape=shape,
            dtype=dtype,
            chunks=(2, *shape[1:]),
            shards=None if shards is None else (shards, *shape[1:]),
            serializer=JpegCodec(),
            compressors=[zarr.codecs.Crc32cCodec()],
        )
    with pytest.raises(ValueError, match="Use codec 'lz4'"):
        encode_chunk(np.zeros(shape, dtype), 90)


def test_refuses_chunks_split_across_channels():
    with pytest.raises(ValueError, match="all 3 channels in each chunk"):
        zarr.create_array(
            zarr.storage.MemoryStore(),
            shape=(4, 16, 16, 3),
            dtype="uint8",
            chunks=(2, 16, 16, 1),
            serializer=JpegCodec(),
            compressors=[zarr.codecs.Crc32cCodec()],
        )


def test_refuses_bad_out():
    data = memoryview(encode_chunk(np.zeros((2, 8, 8, 3), np.uint8), 90))
    with pytest.raises(ValueError, match="Use codec 'lz4'"):
        decode_chunk_into(data, np.empty((2, 8, 8, 3), np.float32), "x")
    with pytest.raises(ValueError, match="C-contiguous"):
        decode_chunk_into(data, np.empty((2, 8, 16, 3), np.uint8)[:, :, ::2], "x")


@pytest.mark.parametrize("quality", [0, 101, -5, 1.5, True, "90", None])
def test_quality_validated(quality):
    with pytest.raises(ValueError, match="quality"):
        JpegCodec(quality=quality)
    with pytest.raises(ValueError, match="quality"):
        encode_chunk(np.zeros((1, 8, 8, 3), np.uint8), quality)


@pytest.mark.parametrize("quality", [1, 75, 100])
def test_quality_range_and_dict_round_trip(quality):
    codec = JpegCodec(quality=quality)
    assert repr(codec) == f"JpegCodec(quality={quality})"
    assert codec.to_dict() == {"name": "daskimg.jpeg", "configuration": {"quality": quality}}
    assert JpegCodec.from_dict(codec.to_dict()) == codec
    assert pickle.loads(pickle.dumps(codec)) == codec
    images = np.full((1, 16, 16, 3), 77, np.uint8)
    back = np.empty_like(images)
    decode_chunk_into(memoryview(encode_chunk(images, quality)), back, "x")
    assert np.abs(back.astype(int) - 77).max() <= (3 if quality >= 75 else 20)


def test_from_dict_defaults_and_refuses_unknown_keys():
    assert JpegCodec.from_dict({"name": "daskimg.jpeg"}) == JpegCodec(quality=90)
    with pytest.raises(ValueError, match="'quality'"):
        JpegCodec.from_dict({"name": "daskimg.jpeg", "configuration": {"qual": 80}})


def test_register_is_idempotent():
    register()
    register()
    assert zarr.registry.get_codec_class(CODEC_NAME) is JpegCodec


def test_non_contiguous_input_is_encoded(photos):
    flipped = photos[:2, :, ::-1]
    back = np.empty_like(flipped)
    decode_chunk_into(memoryview(encode_chunk(flipped, 90)), back, "x")
    _assert_loss_like_pillow(np.ascontiguousarray(flipped), back)
