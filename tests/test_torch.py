"""TorchDataset through real DataLoaders: workers (fork and spawn), persistent workers, ranks,
ordered inference, StatefulDataLoader resume, a lazy source under a distributed Client.

Every test reads real chunks (a store of 103 samples in 13 chunks of 8, shards of 2 chunks) and
checks what it collects against an oracle: each image's pixels encode the original id of the
sample, which the store's ``idx`` column holds at the sample's row (the ``index`` array)."""

from __future__ import annotations

import logging
import os
import time

import dask.array
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from conftest import plain_group  # noqa: E402
from feed_oracle import dataloader_batches  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import daskimg as di  # noqa: E402
from daskimg.feed.source import FeedSource  # noqa: E402
from daskimg.torch import TorchDataset  # noqa: E402

N = 103
# more workers than this machine's cores, on purpose (uneven shares of batches)
pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    n = N
    images = np.zeros((n, 6, 5, 3), np.uint8)
    images[..., 0] = (np.arange(n) % 256)[:, None, None]
    images[..., 1] = (np.arange(n) // 256)[:, None, None]
    ds = di.ImageSet(
        images,
        np.arange(n) % 4,
        classes=["a", "b", "c", "d"],
        paths=[f"f{i:04d}.png" for i in range(n)],
        columns={"idx": np.arange(n, dtype=np.int64)},
    )
    path = tmp_path_factory.mktemp("torch") / "train.zarr.zip"
    return di.to_zarr(ds, path, chunks=8, shard_chunks=2, seed=0)


@pytest.fixture(scope="module")
def stored(store):
    group = plain_group(store)
    return {"idx": group["idx"][:], "paths": np.asarray(group["paths"][:])}


def _index(loader, stored, names=("images", "index")):
    """Store indices of each batch the loader yields, after checking pixels against them."""
    out = []
    for batch in loader:
        assert len(batch) == len(names)
        got = dict(zip(names, batch, strict=True))
        images, index = got["images"], got["index"]
        assert isinstance(images, torch.Tensor) and index.dtype == torch.int64
        decoded = images[:, 0, 0, 0].long() + 256 * images[:, 0, 0, 1].long()
        np.testing.assert_array_equal(decoded.numpy(), stored["idx"][index.numpy()])
        out.append(index.numpy())
    return out


def _expected(epoch, workers=1, rank=0, world=1, **kw):
    return dataloader_batches(N, 8, epoch, workers, rank, world, **kw)


def _same(got, expected):
    assert len(got) == len(expected)
    for x, y in zip(got, expected, strict=True):
        np.testing.assert_array_equal(x, y)


def _draws(batch, rng):
    """An augmentation that shows its random draws: labels := a draw per sample."""
    return {**batch, "labels": rng.integers(0, 2**31, len(batch["labels"]))}


# -- one process, DataLoader workers ----------------------------------------------------------
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("size", [{}, {"batch_size": 4}])
def test_a_dataloader_batching_the_batches_again_is_refused(store, workers, size):
    # DataLoader's default batch_size=1 gave (1, 10, ...) tensors (a model then failed far
    # from the cause); batch_size=4 with no workers stacked 4 batches into one, silently
    ds = TorchDataset(store, batch_size=10, arrays=("images", "index"))
    loader = DataLoader(ds, num_workers=workers, **size)
    with pytest.raises(
        ValueError, match=r"batches this TorchDataset's batches again.*batch_size=None"
    ):
        next(iter(loader))
    got = next(iter(DataLoader(ds, batch_size=None, num_workers=workers)))
    assert got[0].shape[0] == 10 and got[1].shape == (10,)


def test_a_second_iteration_without_workers_cuts_nothing_short_silently(store, stored):
    # next(iter(loader)) to look at a batch mid-epoch (or the same dataset as Lightning's
    # validation loader, with val_check_interval) closed the running iteration: the epoch
    # ended after 5 of 11 batches, without a word
    ds = TorchDataset(store, batch_size=10, arrays=("images", "index"))
    loader = DataLoader(ds, batch_size=None)
    ds.set_epoch(0)
    running = iter(loader)
    first = [next(running)[1].numpy() for _ in range(3)]
    _same(first, _expected(0, batch_size=10, seed=0)[:3])  # the plan's first batches
    peek = next(iter(loader))
    assert len(peek[1]) == 10
    with pytest.raises(RuntimeError, match=r"epoch 0, 3 batches in\) was cut short"):
        next(running)
    # an iteration that handed out its last batch is no cut either: the same dataset read
    # again then (an evaluation at the end of the epoch) lets the loop end normally
    ds.set_epoch(3)
    seen = 0
    for i, _ in enumerate(loader):
        seen += 1
        if i == len(loader) - 1:
            assert sum(len(b[1]) for b in DataLoader(ds, batch_size=None)) == N
    assert seen == len(loader)
    # a loop left with break and begun again is no cut: the first iteration is never resumed
    for epoch in (1, 2):
        ds.set_epoch(epoch)
        for _ in loader:
            break
        ds.set_epoch(epoch)
        _same(_index(loader, stored), _expected(epoch, batch_size=10, seed=0))


def test_len_refuses_ranks_whose_shares_fill_no_batch(tmp_path):
    # len() was 0 on both ranks (70 samples in chunks of 16, batch 40, drop_last): a
    # DataLoader loop, or Lightning, skipped every epoch without a word
    ds = di.ImageSet(np.zeros((70, 2, 2, 1), np.uint8), np.arange(70) % 2)
    path = di.to_zarr(ds, tmp_path / "d.zarr.zip", chunks=16)
    for rank in (0, 1):
        data = TorchDataset(path, batch_size=40, drop_last=True, rank=rank, world_size=2)
        with pytest.raises(ValueError, match=r"batch_size=40 .*empty epoch.*at most 38"):
            len(data)
        with pytest.raises(ValueError, match=r"batch_size=40 .*empty epoch"):
            next(iter(data))
        assert len(TorchDataset(path, batch_size=38, drop_last=True, rank=rank, world_size=2)) == 1


@pytest.mark.parametrize("workers", [0, 1, 2, 3])
@pytest.mark.parametrize("drop_last", [False, True])
def test_each_sample_once_and_len_right_for_any_workers(store, stored, workers, drop_last):
    ds = TorchDataset(store, batch_size=10, arrays=("images", "index"), drop_last=drop_last)
    loader = DataLoader(ds, batch_size=None, num_workers=workers)
    batches = _index(loader, stored)
    assert len(loader) == len(ds) == len(batches)  # without telling the dataset num_workers
    idx = np.concatenate(batches)
    assert len(np.unique(idx)) == len(idx) == (100 if drop_last else N)
    _same(batches, _expected(0, max(1, workers), batch_size=10, seed=0, drop_last=drop_last))


def test_onecycle_lr_takes_len_of_the_loader(store):
    ds = TorchDataset(store, batch_size=7)
    loader = DataLoader(ds, batch_size=None, num_workers=3)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=len(loader))
    steps = 0
    for _ in loader:
        opt.step()
        sched.step()  # one step too many raises ValueError
        steps += 1
    assert steps == len(loader) == 15


@pytest.mark.parametrize("call_set_epoch", [True, False])
@pytest.mark.parametrize("persistent", [True, False])
def test_epochs_reach_the_workers(store, stored, call_set_epoch, persistent):
    ds = TorchDataset(
        store, batch_size=10, arrays=("images", "index", "labels"), transform=_draws, seed=4
    )
    loader = DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=persistent)
    epochs, draws = [], []
    for e in range(3):
        if call_set_epoch:
            ds.set_epoch(e)
        batches = list(loader)
        epochs.append(_index([b[:2] for b in batches], stored))
        index = np.concatenate(epochs[-1]).tolist()
        draws.append(dict(zip(index, np.concatenate([b[2] for b in batches]), strict=True)))
    for e, got in enumerate(epochs):
        assert sorted(np.concatenate(got).tolist()) == list(range(N))  # exactly once
        _same(got, _expected(e, 2, batch_size=10, seed=4))  # the order of epoch e
    orders = {tuple(np.concatenate(got).tolist()) for got in epochs}
    assert len(orders) == 3
    # augmentations draw anew every epoch (they were the same in epoch 1 and 0)
    same = sum(draws[0][i] == draws[1][i] for i in range(N))
    assert same == 0


def test_set_epoch_reaches_spawned_persistent_workers(store, stored):
    ds = TorchDataset(store, batch_size=16, arrays=("images", "index"), seed=2)
    loader = DataLoader(
        ds, batch_size=None, num_workers=2, persistent_workers=True, multiprocessing_context="spawn"
    )
    for e in (5, 9):
        ds.set_epoch(e)
        _same(_index(loader, stored), _expected(e, 2, batch_size=16, seed=2))
    _same(_index(loader, stored), _expected(10, 2, batch_size=16, seed=2))  # then by itself


def test_workers_forked_after_a_peek_in_the_main_process(store, stored, monkeypatch):
    # the main process's unfinished iteration, loads in flight, is copied into the forks
    load, main = FeedSource.load, os.getpid()

    def slow_in_main(self, c, scratch):
        if os.getpid() == main and c != 0:
            time.sleep(1)  # still loading when the workers fork
        return load(self, c, scratch)

    monkeypatch.setattr(FeedSource, "load", slow_in_main)
    ds = TorchDataset(store, batch_size=16, arrays=("images", "index"), seed=2, buffer_chunks=1)
    peek = next(iter(ds))
    assert len(peek[0]) == 16
    loader = DataLoader(ds, batch_size=None, num_workers=2, timeout=120)  # a hang fails
    # the peek was the main process's epoch 0; the workers count their own epochs
    _same(_index(loader, stored), _expected(0, 2, batch_size=16, seed=2, buffer_chunks=1))


def test_the_main_process_advances_by_itself(store, stored):
    ds = TorchDataset(store, batch_size=16, arrays=("images", "index"), seed=2)
    for e in range(2):
        _same(_index(ds, stored), _expected(e, batch_size=16, seed=2))
    ds.set_epoch(7)
    _same(_index(ds, stored), _expected(7, batch_size=16, seed=2))


# -- ordered inference --------------------------------------------------------------------------
@pytest.mark.parametrize("workers", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("batch_size", [10, 16])
def test_shuffle_false_yields_store_order_through_workers(store, stored, workers, batch_size):
    # 103 samples in batches of 10: 11 batches, so with 4 workers they have 3, 3, 3 and 2
    names = ("images", "index", "paths")
    ds = TorchDataset(store, batch_size=batch_size, shuffle=False, arrays=names)
    batches = list(DataLoader(ds, batch_size=None, num_workers=workers))
    index = np.concatenate(_index([b[:2] for b in batches], stored))
    np.testing.assert_array_equal(index, np.arange(N))
    paths = [p for b in batches for p in b[2]]  # strings travel as lists of str
    assert all(isinstance(b[2], list) for b in batches)
    assert paths == stored["paths"].tolist()


# -- ranks ------------------------------------------------------------------------------------
@pytest.mark.parametrize("shuffle", [True, False])
def test_two_ranks_two_workers(store, stored, shuffle):
    per_rank = []
    for rank in range(2):
        ds = TorchDataset(
            store,
            batch_size=10,
            arrays=("images", "index"),
            shuffle=shuffle,
            rank=rank,
            world_size=2,
        )
        ds.set_epoch(3)
        batches = _index(DataLoader(ds, batch_size=None, num_workers=2), stored)
        assert len(batches) == len(ds)
        per_rank.append(np.concatenate(batches))
    every = np.concatenate(per_rank)
    if shuffle:  # training: even by default, equal batch counts, a few repeats
        # rank 0 holds 7 chunks (55 samples: the short one is among them), rank 1 has 6: it
        # repeats 7 samples
        assert len(per_rank[0]) == len(per_rank[1]) == 55
        assert set(every.tolist()) == set(range(N))
    else:  # evaluation: exact, each rank in ascending store order
        assert sorted(every.tolist()) == list(range(N))
        assert all((np.diff(r) > 0).all() for r in per_rank)


def test_world_size_without_a_process_group_is_an_error(store, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    ds = TorchDataset(store, batch_size=10)
    with pytest.raises(RuntimeError, match=r"WORLD_SIZE=2.*init_process_group"):
        len(ds)
    with pytest.raises(RuntimeError, match=r"WORLD_SIZE=2.*rank= and world_size="):
        next(iter(DataLoader(ds, batch_size=None)))
    assert len(TorchDataset(store, batch_size=10, rank=0, world_size=1)) == 11


@pytest.mark.parametrize(
    ("given", "match"),
    [
        ({"world_size": 2}, r"world_size=2 without rank=.*not initialised"),
        ({"rank": 1}, r"rank=1 without world_size=.*not initialised"),
        ({"rank": 0}, r"rank=0 without world_size="),
    ],
)
def test_rank_or_world_size_alone_without_a_process_group_is_an_error(store, given, match):
    # world_size=2 alone made every process rank 0: each read the same half of the epoch
    ds = TorchDataset(store, batch_size=10, **given)
    with pytest.raises(ValueError, match=match):
        len(ds)
    with pytest.raises(ValueError, match=match):
        next(iter(DataLoader(ds, batch_size=None)))
    one = TorchDataset(store, batch_size=10, world_size=1)  # alone, but one rank of one
    assert one._ranks() == (0, 1) and len(one) == len(TorchDataset(store, batch_size=10))


def test_rank_or_world_size_alone_must_agree_with_the_process_group(store, stored):
    dist = torch.distributed
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        whole = np.concatenate(_index(DataLoader(TorchDataset(
            store, batch_size=10, arrays=("images", "index"), world_size=1
        ), batch_size=None), stored))  # fmt: skip
        assert sorted(whole.tolist()) == list(range(N))  # agrees: the group's rank 0 of 1
        for given in ({"world_size": 4}, {"rank": 1}):
            ds = TorchDataset(store, batch_size=10, **given)
            with pytest.raises(ValueError, match=r"but this process is rank 0 of 1"):
                len(ds)
        both = TorchDataset(store, batch_size=10, rank=1, world_size=2)  # both given: theirs
        assert len(both) == len(TorchDataset(store, batch_size=10, rank=1, world_size=2))
        assert both._ranks() == (1, 2)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("seed", [1.5, True, "1", -1, np.float64(2.0)])
def test_a_seed_that_is_no_int_is_refused(store, seed):
    # int(1.5) made it 1: seed=1.5 and seed=1.9 gave seed=1's order without a word
    with pytest.raises(ValueError, match=r"seed must be a non-negative int"):
        TorchDataset(store, batch_size=10, seed=seed)
    with pytest.raises(ValueError, match=r"seed must be a non-negative int"):
        di.BatchIterator(store, batch_size=10, seed=seed)
    assert di.BatchIterator(store, batch_size=10, seed=np.int64(3)).seed == 3


# -- lazy sources -------------------------------------------------------------------------------
def test_a_lazy_source_in_workers_under_a_distributed_client(image_folder, client):
    ds = di.from_folder(image_folder, size=(8, 8), chunks=5)
    expected = ds.images.compute()  # on the client
    data = TorchDataset(ds, batch_size=4, arrays=("images", "index"))
    # timeout: a hang (forked workers waiting for the parent's client) fails instead of blocking
    loader = DataLoader(data, batch_size=None, num_workers=2, timeout=120)
    got = list(loader)
    index = np.concatenate([b[1].numpy() for b in got])
    assert sorted(index.tolist()) == list(range(len(ds)))
    np.testing.assert_array_equal(np.concatenate([b[0].numpy() for b in got]), expected[index])


# -- resume -------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning")  # torchdata's import
@pytest.mark.parametrize("workers", [2, 0])
def test_stateful_dataloader_resumes_mid_epoch(store, stored, tmp_path, monkeypatch, workers):
    sdl = pytest.importorskip("torchdata.stateful_dataloader")
    log = tmp_path / "loads.txt"
    load = FeedSource.load

    def logged(self, c, scratch):  # every chunk read, in every (forked) worker
        with open(log, "a") as f:
            f.write(f"{c}\n")
        return load(self, c, scratch)

    monkeypatch.setattr(FeedSource, "load", logged)
    kw = {"batch_size": 6, "arrays": ("images", "index"), "seed": 5, "buffer_chunks": 2}

    def loader():
        ds = TorchDataset(store, **kw)
        return sdl.StatefulDataLoader(ds, batch_size=None, num_workers=workers)

    first = loader()
    first.dataset.set_epoch(1)
    it = iter(first)
    head = [next(it) for _ in range(7)]
    state = first.state_dict()
    del it
    log.unlink()

    second = loader()
    second.load_state_dict(state)
    tail = list(second)
    got = _index(head + tail, stored)
    expected = _expected(1, max(1, workers), batch_size=6, seed=5, buffer_chunks=2)
    _same(got, expected)  # exactly the rest of epoch 1
    # only the chunks of the batches still to come were read again
    left = np.unique(np.concatenate(expected[7:]) // 8)
    assert sorted(set(map(int, log.read_text().split()))) == left.tolist()
    # and the next epoch follows
    _same(
        _index(second, stored), _expected(2, max(1, workers), batch_size=6, seed=5, buffer_chunks=2)
    )

    other = sdl.StatefulDataLoader(
        TorchDataset(store, **{**kw, "batch_size": 12}), batch_size=None, num_workers=workers
    )
    other.load_state_dict(state)  # checked where it is applied, in each worker
    with pytest.raises(ValueError, match="saved with batch_size=6, and this has batch_size=12"):
        list(other)


def test_state_dict_in_one_process(store, stored):
    kw = {"batch_size": 9, "arrays": ("images", "index"), "seed": 1, "buffer_chunks": 2}
    ds = TorchDataset(store, **kw)
    ds.set_epoch(4)
    assert ds.state_dict()["epoch"] == 4 and ds.state_dict()["batch"] == 0
    gen = iter(ds)
    head = [next(gen) for _ in range(3)]
    state = ds.state_dict()
    assert (state["epoch"], state["batch"]) == (4, 3)
    fresh = TorchDataset(store, **kw)
    fresh.load_state_dict(state)
    _same(_index(head + list(fresh), stored), _expected(4, batch_size=9, seed=1, buffer_chunks=2))
    with pytest.raises(ValueError, match="saved with shuffle=True, and this has shuffle=False"):
        TorchDataset(store, **kw, shuffle=False).load_state_dict(state)


def test_channels_first_and_float(store):
    ds = TorchDataset(store, batch_size=4, channels_first=True, dtype=torch.float32)
    images, labels = next(iter(ds))
    assert images.shape == (4, 3, 6, 5)
    assert images.dtype == torch.float32
    assert float(images.max()) <= 1.0
    assert labels.dtype == torch.int64


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("kind", [np.uint8, np.uint16])
def test_float_images_are_scaled_then_cast(tmp_path, dtype, kind):
    """uint16 pixels >= 65520 came out as inf with dtype=torch.float16 (cast before the
    division); the oracle: numpy's float64 division, cast to the dtype asked for."""
    top = np.iinfo(kind).max
    images = np.linspace(0, top, 4 * 3 * 2 * 1).astype(kind).reshape(4, 3, 2, 1)
    images[0, 0, 0, 0] = top
    store = di.to_zarr(di.ImageSet(images), tmp_path / "s.zarr.zip", order="source", chunks=4)
    ds = TorchDataset(store, batch_size=4, shuffle=False, arrays=("images",),
                      dtype=getattr(torch, dtype))  # fmt: skip
    (got,) = next(iter(ds))
    want = torch.from_numpy(images / float(top)).to(getattr(torch, dtype))
    assert got.dtype == want.dtype
    assert torch.isfinite(got).all() and float(got[0, 0, 0, 0]) == 1.0
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_pickled_dataset_gets_its_own_epochs(store, stored):
    # a dataset pickled into another process (mp.spawn before DDP) must not share the epoch
    # table with the one it came from: here, a pickled copy in this process
    import pickle

    ds = TorchDataset(store, batch_size=16, arrays=("images", "index"), seed=2)
    ds.set_epoch(3)
    copy = pickle.loads(pickle.dumps(ds))
    copy.set_epoch(8)
    assert ds.epoch == 3 and copy.epoch == 8
    _same(
        _index(DataLoader(copy, batch_size=None, num_workers=2), stored),
        _expected(8, 2, batch_size=16, seed=2),
    )
    assert os.getpid() == copy._epochs.owner


def _stateful(store, workers):
    """A StatefulDataLoader of a TorchDataset with small batches and groups (2 chunks)."""
    sdl = pytest.importorskip("torchdata.stateful_dataloader")
    kw = {"batch_size": 6, "arrays": ("images", "index"), "seed": 5, "buffer_chunks": 2}
    return sdl.StatefulDataLoader(TorchDataset(store, **kw), batch_size=None, num_workers=workers)


@pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning")  # torchdata
@pytest.mark.parametrize("workers", [0, 2, 3])
def test_stateful_resume_at_the_end_of_an_epoch_repeats_nothing(store, stored, workers):
    # a state saved when some workers had delivered their whole share: they used to start
    # the next epoch at once, mixing its batches into this one's rest (duplicates), or
    # serving them in another worker's turn (another order); a state saved after the epoch
    # ended must resume with the next epoch, not skip one; with no workers a state saved after
    # the last batch started the next epoch at once, which a loop calling set_epoch per epoch
    # then trained twice
    def loader():
        return _stateful(store, workers)

    reference = loader()
    epochs = [_index(reference, stored) for _ in range(3)]
    total = len(epochs[0])
    _same(epochs[0], _expected(0, max(1, workers), batch_size=6, seed=5, buffer_chunks=2))
    for cut in (total - 2, total - 1, total, "finished"):
        first = loader()
        it = iter(first)
        head = _index(it if cut == "finished" else (next(it) for _ in range(cut)), stored)
        state = first.state_dict()
        del it, first
        resumed = loader()
        resumed.load_state_dict(state)
        rest = _index(resumed, stored)
        following = _index(resumed, stored)
        if cut == "finished":
            _same(rest, epochs[1])
            _same(following, epochs[2])
        else:  # the rest of the epoch, exactly (none after its last batch), then the next
            _same(head + rest, epochs[0])
            _same(following, epochs[1])


@pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning")  # torchdata
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("ended", [True, False])  # after StopIteration / after the last batch
def test_a_finished_state_gives_way_to_a_later_set_epoch(store, stored, workers, ended):
    # a state saved after epoch 0's last batch, then a loop resuming at epoch 1 with
    # set_epoch(1): the finished state's empty rest was served as epoch 1
    def loader():
        return _stateful(store, workers)

    first = loader()
    first.dataset.set_epoch(0)
    it = iter(first)
    head = _index(it if ended else (next(it) for _ in range(len(first))), stored)
    state = first.state_dict()
    assert state["_iterator_finished"] == ended
    del it, first
    resumed = loader()
    resumed.load_state_dict(state)
    got = []
    for epoch in (1, 2):
        resumed.dataset.set_epoch(epoch)
        got.append(_index(resumed, stored))
    expected = [
        _expected(e, max(1, workers), batch_size=6, seed=5, buffer_chunks=2) for e in (0, 1, 2)
    ]
    _same(head, expected[0])
    _same(got[0], expected[1])
    _same(got[1], expected[2])


def _slow_second_worker(worker_id):
    if worker_id == 1:
        time.sleep(2)  # it never gets to a batch before the loop below breaks


def test_an_epoch_ended_early_leaves_the_workers_agreeing_on_the_next(store, stored):
    """(review) With the epoch taken at a worker's first batch, a worker the DataLoader shut
    down before it asked for one lagged its siblings by an epoch from then on: later epochs
    missed and repeated samples. Workers take their epoch at iter()."""
    ds = TorchDataset(store, batch_size=8, arrays=("images", "index"))
    for epoch in range(3):
        loader = DataLoader(
            ds, batch_size=None, num_workers=2, worker_init_fn=_slow_second_worker,
            multiprocessing_context="fork",
        )  # fmt: skip
        if epoch == 0:
            next(iter(loader))  # and stop: the epoch ends early
            continue
        got = np.concatenate(_index(loader, stored))
        assert sorted(got.tolist()) == list(range(N))


def test_a_store_replaced_under_a_dataset_is_refused_not_mixed_in(tmp_path):
    # workers open the store again by its path each epoch: a store written again since
    # (more samples, other labels) was read without a word, or mixed into one epoch
    from daskimg.errors import ChecksumError

    path = tmp_path / "s.zarr.zip"
    first = di.ImageSet(np.zeros((40, 4, 4, 3), np.uint8), np.arange(40) % 2, classes=["a", "b"])
    di.to_zarr(first, path, chunks=8)
    ds = TorchDataset(str(path), batch_size=8, shuffle=True, seed=0)
    loader = DataLoader(ds, batch_size=None, num_workers=2)
    assert sum(len(b[0]) for b in loader) == 40
    second = di.ImageSet(np.ones((120, 4, 4, 3), np.uint8), np.arange(120) % 2, classes=["b", "a"])
    di.to_zarr(second, path, chunks=8, overwrite=True)
    with pytest.raises(ChecksumError, match="the store was replaced since this TorchDataset"):
        list(loader)
    fresh = TorchDataset(str(path), batch_size=8, shuffle=True, seed=0)  # made again: fine
    assert sum(len(b[0]) for b in DataLoader(fresh, batch_size=None, num_workers=2)) == 120


@pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning")  # torchdata's import
@pytest.mark.parametrize("workers", [0, 2])
def test_every_rank_resumes_from_rank_0s_state_as_lightning_saves_it(store, stored, workers):
    # PyTorch Lightning saves rank 0's loader state only and gives it to every rank: rank 1
    # was refused ("saved with consumer=0"), so a DDP run could not resume mid-epoch
    sdl = pytest.importorskip("torchdata.stateful_dataloader")
    kw = {"batch_size": 4, "arrays": ("index",), "seed": 2, "world_size": 2}

    def loader(rank, even=True):
        return sdl.StatefulDataLoader(
            TorchDataset(store, **kw, rank=rank, even=even), batch_size=None, num_workers=workers
        )

    whole = {r: [b[0].tolist() for b in loader(r)] for r in (0, 1)}  # the oracle: one run
    first = loader(0)
    it = iter(first)
    for _ in range(3):
        next(it)
    state = first.state_dict()
    del it
    for r in (0, 1):
        resumed = loader(r)
        resumed.load_state_dict(state)
        assert [b[0].tolist() for b in resumed] == whole[r][3:]
    other = loader(0, even=False)  # ranks of unequal batch counts: said, not guessed
    it = iter(other)
    next(it)
    uneven = loader(1, even=False)
    uneven.load_state_dict(other.state_dict())
    del it
    with pytest.raises(ValueError, match="cannot resume rank 1 from the state of rank 0"):
        list(uneven)


@pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning")  # torchdata's import
@pytest.mark.parametrize(
    ("saved", "resumed"), [((0, 1), (0, 2)), ((0, 1), (1, 2)), ((1, 2), (0, 1))]
)
def test_a_state_of_another_world_size_is_refused_naming_the_ranks(store, saved, resumed):
    # a single-process checkpoint resumed by a 2-rank job was refused naming settings the
    # user never passed: "saved with even=False" (even's default follows the world size),
    # or, with even given, "num_consumers=1" / "consumer=0"
    sdl = pytest.importorskip("torchdata.stateful_dataloader")
    kw = {"batch_size": 4, "seed": 2}
    first = sdl.StatefulDataLoader(
        TorchDataset(store, **kw, rank=saved[0], world_size=saved[1]), batch_size=None
    )
    it = iter(first)
    next(it)
    state = first.state_dict()
    del it
    for even in (None, False):
        ds = TorchDataset(store, **kw, rank=resumed[0], world_size=resumed[1], even=even)
        loader = sdl.StatefulDataLoader(ds, batch_size=None)
        loader.load_state_dict(state)
        says = (
            f"saved by rank {saved[0]} of world_size={saved[1]}, and this is rank "
            f"{resumed[0]} of world_size={resumed[1]}"
        )
        with pytest.raises(ValueError, match=says):
            next(iter(loader))


def test_a_dtype_that_changes_volume_values_is_refused_naming_them(tmp_path):
    # TorchDataset(dtype=...) cast volumes bare: int16 CT 2049 became 2048 in float16,
    # -1000 HU wrapped to 24 in uint8, uint16 65520 became inf in float16
    ct = np.zeros((4, 2, 3, 3, 1), np.int16)
    ct[:, 0, 0, 0, 0] = [-1000, 0, 2049, 2999]
    store = di.to_zarr(di.ImageSet(ct, np.arange(4) % 2), tmp_path / "ct.zarr.zip")
    for dtype, says in (
        (
            torch.float16,
            r"holds 2049 \(torch.int16\), which becomes 2048.0 in torch.float16 \(2 values",
        ),
        (torch.uint8, r"\(torch.int16\), which becomes \d+ in torch.uint8 \(3 values"),
    ):
        ds = TorchDataset(store, batch_size=4, dtype=dtype, shuffle=False)
        with pytest.raises(ValueError, match=says):
            next(iter(DataLoader(ds, batch_size=None)))
    ds = TorchDataset(store, batch_size=4, dtype=torch.float32, shuffle=False)
    got = next(iter(DataLoader(ds, batch_size=None)))[0]
    # the oracle: plain zarr's values, exactly (int16 in float32 is exact)
    np.testing.assert_array_equal(got.numpy(), plain_group(store)["images"][...].astype(np.float32))


def test_casts_that_change_integers_are_refused_whatever_their_types():
    # (review) int64 2**53 + 1 as float64, uint8 128 as int8: each changed without a word
    from daskimg.torch import _cast

    for values, src, dst in (
        ([2**53 + 1], torch.int64, torch.float64),
        ([128], torch.uint8, torch.int8),
        ([-1], torch.int16, torch.uint16),
        ([1e300], torch.float64, torch.float32),
        ([0.5, 1e-300], torch.float64, torch.float32),  # became 0 without a word
        ([1e-8], torch.float32, torch.float16),
    ):
        with pytest.raises(ValueError, match="values of this batch change"):
            _cast(torch.tensor(values, dtype=src), dst, "images")
    for values, src, dst in (  # kept: exact, or a float's own rounding
        ([2**53], torch.int64, torch.float64),
        ([127], torch.uint8, torch.int8),
        ([0.1, float("nan"), -float("inf")], torch.float64, torch.float32),
        ([0.0, -0.0, 1e-40], torch.float64, torch.float32),  # 0 stays 0; 1e-40 is subnormal
        ([65504, 2048], torch.uint16, torch.float16),
    ):
        out = _cast(torch.tensor(values, dtype=src), dst, "images")
        np.testing.assert_array_equal(out.numpy(), torch.tensor(values, dtype=src).to(dst).numpy())


def test_float64_values_that_would_become_0_in_float32_are_refused(tmp_path):
    # TorchDataset(dtype=torch.float32) made a float64 volume's 1e-300 a 0 without a word,
    # while 1e300 (inf) was refused
    vol = np.full((3, 2, 3, 4, 1), 1e-300)
    vol[1] = 0.25
    store = di.to_zarr(di.ImageSet(vol), tmp_path / "tiny.zarr.zip", order="source")
    ds = TorchDataset(store, batch_size=3, arrays=("images",), dtype=torch.float32, shuffle=False)
    with pytest.raises(ValueError, match=r"holds 1e-300 \(torch.float64\), which becomes 0.0"):
        next(iter(DataLoader(ds, batch_size=None)))
    ds = TorchDataset(store, batch_size=3, arrays=("images",), dtype=torch.float64, shuffle=False)
    (got,) = next(iter(DataLoader(ds, batch_size=None)))
    np.testing.assert_array_equal(got.numpy(), plain_group(store)["images"][...])  # the oracle


def test_ddp_ranks_of_a_small_image_store_each_read_their_share(tmp_path, caplog):
    # 2,000 32x32 images went into one 8 MiB chunk by default: both of 2 ranks read all of
    # it, batch for batch the same without workers, with no word
    import logging

    import dask.array as da

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (2000, 32, 32, 3), dtype=np.uint8)
    ds = di.ImageSet(
        da.from_array(pixels, chunks=500), rng.integers(0, 2, 2000), classes=["a", "b"]
    )
    path = di.to_zarr(ds, tmp_path / "s.zarr.zip")
    stored = plain_group(path)
    assert stored["images"].chunks[0] < 2000 // 4  # several chunks for each rank
    seen = []
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        for rank in range(2):
            part = TorchDataset(path, batch_size=64, arrays=("index",), rank=rank, world_size=2)
            seen.append(np.concatenate([b[0].numpy() for b in DataLoader(part, batch_size=None)]))
    assert "chunk by chunk" not in caplog.text
    assert len(seen[0]) == len(seen[1]) and len(seen[0]) <= 1000 * 1.05  # N / 2, few repeats
    assert set(seen[0].tolist()) | set(seen[1].tolist()) == set(range(2000))
    shared = set(seen[0].tolist()) & set(seen[1].tolist())
    assert len(shared) <= 0.05 * 2000
    # a store of one chunk (chunks= given): said, with the fix, once
    one = di.to_zarr(ds, tmp_path / "one.zarr.zip", chunks=2000)
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        for rank in range(2):
            part = TorchDataset(one, batch_size=64, rank=rank, world_size=2)
            assert len(part) == 32  # each rank all 2,000 samples
            next(iter(DataLoader(part, batch_size=None)))
    said = [r for r in caplog.records if "chunk by chunk" in r.getMessage()]
    assert len(said) == 1 and "repeats 2,000 samples (100% more" in said[0].getMessage()
    assert "chunks=62" in said[0].getMessage()
    caplog.clear()
    # what drop_last's partial batches leave out is the batches', not the chunks': not said
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        for rank in range(2):
            len(TorchDataset(path, batch_size=600, drop_last=True, rank=rank, world_size=2))
    assert "chunk by chunk" not in caplog.text


def test_a_batch_size_beyond_the_set_with_drop_last_is_refused(store):
    # every epoch was empty, unsaid, in one process: a training loop ran on nothing
    with pytest.raises(
        ValueError, match=rf"batch_size={N + 1} with drop_last=True leaves no batch"
    ):
        TorchDataset(store, batch_size=N + 1, drop_last=True)
    whole = TorchDataset(store, batch_size=N, drop_last=True)
    assert [len(b[0]) for b in DataLoader(whole, batch_size=None)] == [N]


@pytest.mark.parametrize("eval_workers", [1, 3])
def test_two_dataloaders_of_one_dataset_with_other_worker_counts_keep_whole_epochs(
    store, stored, eval_workers
):
    # a train loop (2 persistent workers) and a train-set evaluation (1 worker) of one
    # TorchDataset, no set_epoch (as under Lightning): their worker 0 shared an epoch count,
    # so the training epochs after the first repeated samples and missed others (204 of 300)
    ds = TorchDataset(store, batch_size=10, arrays=("images", "index"))
    train = DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True)
    other = DataLoader(ds, batch_size=None, num_workers=eval_workers, persistent_workers=True)
    orders = []
    for _ in range(3):
        epoch = np.concatenate(_index(train, stored))
        assert sorted(epoch.tolist()) == list(range(N))  # each sample once
        assert sorted(np.concatenate(_index(other, stored)).tolist()) == list(range(N))
        orders.append(epoch.tolist())
    assert orders[0] != orders[1] != orders[2]  # a new order each epoch


def test_repr_says_what_is_fed(store):
    ds = TorchDataset(store, batch_size=16, seed=4, rank=1, world_size=2)
    ds.set_epoch(3)
    n = plain_group(store)["labels"].shape[0]
    assert repr(ds) == (
        f"TorchDataset({str(store)!r}, samples={n}, batch_size=16, "
        "arrays=['images', 'labels'], shuffle=True, seed=4, epoch=3, rank=1 of 2)"
    )


@pytest.mark.parametrize("size", [(28, 28), (4, 6)])
def test_channels_first_gives_gray_images_without_a_channel_axis_one(tmp_path, size):
    # (N, H, W) images (MNIST-like) came out transposed: W moved in front of H, unseen
    # when square; the oracle: numpy's own new axis
    digits = np.random.default_rng(0).integers(0, 256, (8, *size), dtype=np.uint8)
    labels = np.arange(8) % 2
    path = di.to_zarr(
        di.ImageSet(digits, labels, classes=["a", "b"]), tmp_path / "d.zarr.zip", order="source"
    )
    for src in (path, di.ImageSet(digits, labels, classes=["a", "b"])):
        ds = TorchDataset(src, batch_size=8, shuffle=False, channels_first=True)
        images, _ = next(iter(DataLoader(ds, batch_size=None)))
        np.testing.assert_array_equal(images.numpy(), digits[:, None])


def test_big_endian_arrays_are_fed_as_their_values(tmp_path):
    # torch refused them at the first batch, naming no array ("byte order different")
    images = np.arange(8 * 4 * 4 * 3, dtype=">u2").reshape(8, 4, 4, 3)
    ids = np.arange(8, dtype=">i4") * 1000
    for src in (
        {"images": images, "ids": ids},
        {"images": dask.array.from_array(images), "ids": dask.array.from_array(ids)},
    ):
        ds = TorchDataset(src, batch_size=4, shuffle=False, arrays=("images", "ids"))
        got = list(DataLoader(ds, batch_size=None))
        np.testing.assert_array_equal(np.concatenate([b[1].numpy() for b in got]), ids)
        np.testing.assert_array_equal(np.concatenate([b[0].numpy() for b in got]), images)


def _id_store(tmp_path, n: int, *, side: int, classes: int, chunks: int) -> str:
    """A store of ``n`` images whose first pixel value is the sample id (labels id % classes)."""
    images = np.zeros((n, side, side, 3), np.uint8)
    images[..., 0] = np.arange(n)[:, None, None]  # pixel = sample id
    labels = np.arange(n) % classes
    return str(di.to_zarr(di.ImageSet(images, labels), tmp_path / "s.zarr.zip", chunks=chunks))


def _stateful_loader(sdl, store: str, batch_size: int, **loader):
    """A TorchDataset of ``store`` (seed 0) and its torchdata StatefulDataLoader."""
    ds = TorchDataset(store, batch_size=batch_size, seed=0)
    return ds, sdl.StatefulDataLoader(ds, batch_size=None, **loader)


@pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning")  # torchdata's import
@pytest.mark.parametrize("persistent", [False, True])
@pytest.mark.parametrize(("n", "workers"), [(64, 3), (31, 2)])
def test_a_state_saved_after_an_epoch_resumes_its_next_epoch_whole(
    tmp_path, persistent, n, workers
):
    # a StatefulDataLoader state saved after an epoch's loop, resumed with set_epoch(next):
    # the loader drops its resumed workers at once and makes new ones; a worker whose share
    # was under prefetch_factor batches had read it to its end while prefetching, which
    # counted its epoch as taken, and its successor read the next epoch's plan beside its
    # siblings' of this one: 21 of 64 samples twice and 21 never (or, every share small,
    # the next epoch's order, then that order again). The oracle: an uninterrupted loader
    sdl = pytest.importorskip("torchdata.stateful_dataloader")
    store = _id_store(tmp_path, n, side=4, classes=5, chunks=7)

    def make():
        return _stateful_loader(sdl, store, 16, num_workers=workers, persistent_workers=persistent)

    def epoch_ids(ds, loader, epoch):
        ds.set_epoch(epoch)
        return [int(i) for b in loader for i in b[0][:, 0, 0, 0]]

    ds, loader = make()
    epoch_ids(ds, loader, 0)
    state = loader.state_dict()
    whole = [epoch_ids(ds, loader, e) for e in (1, 2)]
    assert whole[0] != whole[1] and sorted(whole[0]) == list(range(n))
    ds2, resumed = make()
    resumed.load_state_dict(state)
    got = [epoch_ids(ds2, resumed, e) for e in (1, 2)]
    assert all(sorted(ids) == list(range(n)) for ids in got)  # each sample once, always
    if n == 64:  # a share of 2 batches (3 workers): the uninterrupted order, exactly
        assert got == whole
    # (every share under prefetch_factor batches, n == 31: the dropped loader read every
    # share to its end, as a loader that went on would have; the order may be the next
    # epoch's, as the README says)


@pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning")  # torchdata's import
def test_a_last_batch_state_resumed_once_then_run_without_set_epoch_keeps_workers_together(
    tmp_path,
):
    # Lightning's pattern: a state saved at an epoch's last batch, set_epoch(next) once
    # when the loader is made, later epochs without it. Workers of unequal shares (2 and 1
    # batches) settled the resumed epoch apart, one a whole epoch behind the other for the
    # rest of the run: every later epoch repeated and missed a fifth of the samples.
    # The oracle: an uninterrupted loader
    sdl = pytest.importorskip("torchdata.stateful_dataloader")
    n = 20
    store = _id_store(tmp_path, n, side=2, classes=3, chunks=4)

    def make(epoch):
        ds = TorchDataset(store, batch_size=8, seed=0)
        ds.set_epoch(epoch)
        return sdl.StatefulDataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True)

    def ids(loader):
        return [int(i) for b in loader for i in b[0][:, 0, 0, 0]]

    whole = make(0)
    oracle = [ids(whole) for _ in range(4)]
    first = make(0)
    for j, _ in enumerate(first):
        if j == len(first) - 1:
            state = first.state_dict()  # at epoch 0's last batch
            break
    for _ in range(3):  # each order of the workers' starts
        resumed = make(1)
        resumed.load_state_dict(state)
        got = [ids(resumed) for _ in range(3)]
        assert all(sorted(g) == list(range(n)) for g in got), got
        assert got[1:] == oracle[2:]  # (epoch 1: the documented neighbour swap at most)


@pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning")  # torchdata's import
@pytest.mark.parametrize(("snapshot", "n", "workers"), [(5, 48, 2), (7, 48, 2), (1, 48, 0)])
def test_a_state_its_epoch_had_not_finished_resumed_past_that_epoch_is_refused(
    tmp_path, snapshot, n, workers
):
    # StatefulDataLoader(snapshot_every_n_steps=n > 1) keeps its workers' states as they
    # were up to n - 1 batches before the state is saved, and skips the batches since when
    # resumed. Saved at epoch 0's last batch and resumed with set_epoch(1), the workers
    # resumed epoch 0 a few batches before its end, the loader skipped those, and epoch 1
    # trained on no batch at all (or half of them), without a word; reading the rest first
    # (a first fix) unbalanced the workers, and a state saved in that epoch resumed a worker
    # into the next. A mid-epoch state resumed past its epoch is the same. The oracle for
    # what still resumes: an uninterrupted loader
    sdl = pytest.importorskip("torchdata.stateful_dataloader")
    store = _id_store(tmp_path, n, side=2, classes=3, chunks=8)

    def make():
        return _stateful_loader(sdl, store, 4, num_workers=workers, snapshot_every_n_steps=snapshot)

    def epoch_ids(ds, loader, epoch, save_at=None):
        ds.set_epoch(epoch)
        out, state = [], None
        for j, b in enumerate(loader):
            out += [int(i) for i in b[0][:, 0, 0, 0]]
            if j == save_at:
                state = loader.state_dict()
        return out, state

    ds, loader = make()
    save_at = len(loader) - 1 if snapshot > 1 else len(loader) // 2  # (a lagging or mid state)
    first, state = epoch_ids(ds, loader, 0, save_at)
    ds2, resumed = make()
    resumed.load_state_dict(state)
    said = r"saved \d+ batch\(es\) before the end of epoch 0.*set_epoch\(1\)"
    with pytest.raises(ValueError, match=said):
        epoch_ids(ds2, resumed, 1)
    ds3, resumed = make()  # in its own epoch it resumes exactly
    resumed.load_state_dict(state)
    rest, _ = epoch_ids(ds3, resumed, 0)
    assert rest == first[(save_at + 1) * 4 :]


def test_a_float_dtype_refuses_a_transform_that_returns_images_of_two_types(tmp_path):
    """TorchDataset(dtype=torch.float32) divides by what the images' type says: a transform
    returning floats for some batches of a uint8 store gave 0..1 and 0..255 batches."""

    def brightness(batch, rng):
        if rng.random() < 0.5:
            batch = dict(batch)
            batch["images"] = np.clip(batch["images"] * rng.uniform(0.9, 1.1), 0, 255)
        return batch

    path = di.to_zarr(
        di.ImageSet(np.full((128, 8, 8, 3), 200, np.uint8), np.zeros(128, int), classes=["a"]),
        tmp_path / "s.zarr.zip", chunks=16,
    )  # fmt: skip
    ds = TorchDataset(path, batch_size=16, transform=brightness, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"in an earlier one.*dtype=None"):
        list(ds)
    # a transform that always returns floats it scaled itself: every batch on its scale
    own = lambda batch, rng: {**batch, "images": batch["images"] / np.float32(255)}  # noqa: E731
    got = list(TorchDataset(path, batch_size=16, transform=own, dtype=torch.float32))
    assert all(torch.allclose(b[0], torch.tensor(200 / 255)) for b in got) and len(got) == 8
    # without dtype the batches are as the transform returned them, as documented
    got = list(TorchDataset(path, batch_size=16, transform=brightness))
    assert {b[0].dtype for b in got} == {torch.uint8, torch.float64}


@pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning")  # torchdata
def test_a_main_process_state_beside_dataloader_workers_says_it_is_not_theirs(
    store, stored, caplog
):
    """ds.state_dict() in the main process of a DataLoader with workers, mid-epoch: the
    state of an epoch's start (the workers held where it was), without a word; resumed with
    the same worker count it was refused as "saved with num_workers=1", a count never set,
    and with none it read the whole epoch again. Now the state is said for what it is and
    the refusal says why; StatefulDataLoader (which asks the workers) says nothing."""
    from torch.utils.data import DataLoader

    sdl = pytest.importorskip("torchdata.stateful_dataloader")
    kw = {"batch_size": 8, "arrays": ("images", "index")}
    ds = TorchDataset(store, **kw)
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        assert ds.state_dict()["batch"] == 0  # before any loader: no word
    assert "main process" not in caplog.text
    loader = DataLoader(ds, batch_size=None, num_workers=2)
    ds.set_epoch(1)
    batches = iter(loader)
    seen = [next(batches) for _ in range(3)]
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        state = ds.state_dict()
    assert "main process of a DataLoader with workers" in caplog.text
    assert (state["epoch"], state["batch"], state["num_workers"]) == (1, 0, 1)  # the oracle:
    assert len(seen) == 3  # three batches were read by the workers, none by this process
    del batches
    again = TorchDataset(store, **kw)
    again.load_state_dict(state)
    with pytest.raises(ValueError, match=r"num_workers=1 .*StatefulDataLoader"):
        next(iter(DataLoader(again, batch_size=None, num_workers=2)))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        loader = sdl.StatefulDataLoader(TorchDataset(store, **kw), batch_size=None, num_workers=2)
        it = iter(loader)
        next(it)
        assert "_snapshot" in loader.state_dict()
        del it
    assert "main process" not in caplog.text


def test_channels_first_true_on_images_already_channels_first_is_refused():
    # (N, C, H, W) arrays with channels_first=True: tensors (B, W, C, H) came out, the
    # width as channels; with channels_first=False they are fed as given
    x = np.random.default_rng(0).integers(0, 256, (10, 3, 16, 20), dtype=np.uint8)
    labels = np.arange(10) % 2
    for source in (di.ImageSet(x, labels), (x, labels)):
        with pytest.raises(ValueError, match=r"look channels-first \(N, C, H, W\) already"):
            TorchDataset(source, batch_size=4, channels_first=True)
        images, _ = next(iter(TorchDataset(source, batch_size=4, shuffle=False)))
        np.testing.assert_array_equal(images.numpy(), x[:4])  # oracle: the array given


def _forked_child_reads(store: str, q) -> None:
    ds = TorchDataset(store, batch_size=8, arrays=("images", "index"))
    q.put(sorted(int(i) for _, index in ds for i in index))


def test_a_dataset_made_in_a_forked_child_does_not_hang(store):
    # a multiprocessing child forked from a process that had used torch's thread pool (and
    # made a TorchDataset): making one there hung for good, in the shared epoch table's copy
    import multiprocessing

    TorchDataset(store, batch_size=8)
    x = torch.randn(600, 600)
    float((x @ x).sum())  # the pool in use in this process
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    child = ctx.Process(target=_forked_child_reads, args=(store, q))
    child.start()
    try:
        got = q.get(timeout=120)
    finally:
        child.kill()
        child.join()
    assert got == list(range(N))


def test_channels_first_images_put_in_a_set_from_a_store_are_refused(tmp_path):
    # (regression probe) images put in the place of a store's own were exempt as its own
    hwc = np.zeros((8, 16, 16, 3), np.uint8)
    store = di.to_zarr(di.ImageSet(hwc, np.arange(8) % 2), tmp_path / "s.zarr")
    opened = di.open_zarr(store)
    opened.images = dask.array.from_array(np.ascontiguousarray(np.moveaxis(hwc, -1, 1)))
    with pytest.raises(ValueError, match=r"look channels-first \(N, C, H, W\) already"):
        TorchDataset(opened, batch_size=4, channels_first=True)
    TorchDataset(di.open_zarr(store), batch_size=4, channels_first=True)  # its own: fed
