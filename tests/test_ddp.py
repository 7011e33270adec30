"""A real DDP run: 2 processes (gloo on 127.0.0.1), 2 DataLoader workers each, the dataset built
before ``init_process_group`` (the usual order in scripts), with ``WORLD_SIZE``/``RANK`` set as
torchrun sets them. Training takes a gradient all-reduce per batch, which hangs (here: times out)
when the ranks' batch counts differ."""

from __future__ import annotations

import datetime
import os
import pickle
import socket

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from conftest import plain_group  # noqa: E402
from feed_oracle import dataloader_batches, decoded_ids  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import daskimg as di  # noqa: E402
from daskimg.torch import TorchDataset  # noqa: E402

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_main(rank: int, port: int, store: str, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD), RANK=str(rank)
    )
    # built before the process group exists: rank and world size are looked up when iterating
    train = TorchDataset(store, batch_size=10, arrays=("images", "index"), seed=3)
    infer = TorchDataset(store, batch_size=10, arrays=("images", "index"), shuffle=False)
    dist.init_process_group(
        "gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60)
    )
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(3, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = DataLoader(train, batch_size=None, num_workers=2, persistent_workers=True)
    result: dict[str, object] = {"len": len(loader), "epochs": []}
    for epoch in range(2):
        train.set_epoch(epoch)
        seen = []
        for images, index in loader:
            loss = model(images[:, 0, 0].float()).sum()
            opt.zero_grad()
            loss.backward()  # the all-reduce: every rank must take part in every step
            opt.step()
            seen.append((index.numpy(), decoded_ids(images.numpy())))
        result["epochs"].append(seen)  # type: ignore[union-attr]
    # drop_last: full batches, as many on each rank (the all-reduce would hang), none repeated
    dropping = TorchDataset(store, batch_size=10, arrays=("index",), seed=3, drop_last=True)
    result["dropped"] = []
    for (index,) in DataLoader(dropping, batch_size=None, num_workers=2):
        loss = model(index[:, None].float().repeat(1, 3)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        result["dropped"].append(index.numpy())  # type: ignore[union-attr]
    # ordered inference: each rank in store order, every sample once. The training workers
    # were spawned (mp.spawn makes spawn the default start method of the ranks): their rank
    # came with the pickled dataset; these are forked and find the process group themselves
    forked = DataLoader(infer, batch_size=None, num_workers=2, multiprocessing_context="fork")
    result["infer"] = [(index.numpy(), decoded_ids(images.numpy())) for images, index in forked]
    result["infer_len"] = len(infer)
    # write-back (the README's recipe): each rank predicts its share, rank 0 gathers the
    # (index, prediction) pairs and is the one writer of the store
    mine = [(index, ids.astype(np.float32) + 0.5) for index, ids in result["infer"]]
    gathered: list[object] | None = [None] * WORLD if rank == 0 else None
    dist.gather_object(mine, gathered, dst=0)
    if rank == 0:
        assert gathered is not None
        with di.ArrayWriter(store, name="pred", shape=(), dtype="float32", mode="a") as w:
            for part in gathered:
                for index, pred in part:  # type: ignore[union-attr]
                    w.append(pred, index=index)
    dist.barrier()
    dist.destroy_process_group()
    with open(os.path.join(out, f"rank{rank}.pkl"), "wb") as f:
        pickle.dump(result, f)


@pytest.mark.slow
def test_two_process_ddp_with_two_workers_each(tmp_path, indexed_set):
    store = str(di.to_zarr(indexed_set, tmp_path / "train.zarr.zip", chunks=8, shard_chunks=2))
    stored_idx = plain_group(store)["idx"][:]
    mp.spawn(_rank_main, args=(_free_port(), store, str(tmp_path)), nprocs=WORLD, join=True)
    results = []
    for rank in range(WORLD):
        with open(tmp_path / f"rank{rank}.pkl", "rb") as f:
            results.append(pickle.load(f))

    for r in results:  # the pixels are those of the samples at the indices delivered
        for index, ids in [*(b for e in r["epochs"] for b in e), *r["infer"]]:
            np.testing.assert_array_equal(ids, stored_idx[index])
    orders = []
    for epoch in range(2):
        per_rank = [[index for index, _ in r["epochs"][epoch]] for r in results]
        # the same number of batches on both ranks (even, the default for shuffled DDP), = len()
        assert [len(b) for b in per_rank] == [r["len"] for r in results] == [6, 6]
        for rank, batches in enumerate(per_rank):
            expected = dataloader_batches(
                103, 8, epoch, 2, rank, WORLD, batch_size=10, seed=3, even=True
            )
            assert len(batches) == len(expected)
            for got, want in zip(batches, expected, strict=True):
                np.testing.assert_array_equal(got, want)
        every = np.concatenate([np.concatenate(b) for b in per_rank])
        assert set(every.tolist()) == set(range(103))  # every sample, a few (<= 8) twice
        assert len(every) - 103 <= 8
        orders.append(every)
    assert not np.array_equal(orders[0], orders[1])  # epochs differ
    # drop_last: 55 and 48 samples of their own, so 4 full batches each, none repeated
    dropped = [r["dropped"] for r in results]
    assert [len(b) for b in dropped] == [4, 4]
    assert all(len(b) == 10 for r in dropped for b in r)
    every = np.concatenate([np.concatenate(r) for r in dropped])
    assert len(np.unique(every)) == len(every) == 80
    infer = [np.concatenate([index for index, _ in r["infer"]]) for r in results]
    assert [len(r["infer"]) for r in results] == [r["infer_len"] for r in results] == [6, 5]
    np.testing.assert_array_equal(np.sort(np.concatenate(infer)), np.arange(103))
    assert all((np.diff(i) > 0).all() for i in infer)  # each rank in store order
    # the predictions written back by rank 0 sit on their samples (plain zarr)
    np.testing.assert_array_equal(plain_group(store)["pred"][:], stored_idx + 0.5)
