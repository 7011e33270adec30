"""PyTorch Lightning as its users write it: ``Trainer(accelerator="cpu", devices=2,
strategy="ddp_spawn")`` fed by ``DataLoader(TorchDataset(...), batch_size=None, num_workers=2,
persistent_workers=True)``, the README's defaults otherwise. Lightning never calls the dataset's
``set_epoch``: the persistent workers advance by themselves. Each rank records the store
indices (and the ids the pixels encode) of every batch it trains on, per epoch."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("pytorch_lightning")
from conftest import plain_group  # noqa: E402
from feed_oracle import dataloader_batches, decoded_ids  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import daskimg as di  # noqa: E402
from daskimg.torch import TorchDataset, lightning_epoch  # noqa: E402

N = 96  # 12 chunks of 8: 6 per rank, so every sample comes exactly once per epoch


class Recorder(pl.LightningModule):
    def __init__(self, store: str, out: str) -> None:
        super().__init__()
        self.store, self.out = store, out
        self.layer = torch.nn.Linear(3, 4)
        self.seen: list[tuple[np.ndarray, np.ndarray]] = []

    def train_dataloader(self) -> DataLoader:
        ds = TorchDataset(self.store, batch_size=16, arrays=("images", "labels", "index"))
        return DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True)

    def training_step(self, batch, batch_idx):
        images, labels, index = batch
        self.seen.append((index.numpy(), decoded_ids(images.numpy())))
        logits = self.layer(images[:, 0, 0].float())
        return torch.nn.functional.cross_entropy(logits, labels)

    def on_train_epoch_end(self) -> None:
        name = f"rank{self.global_rank}-epoch{self.current_epoch}.pkl"
        with open(os.path.join(self.out, name), "wb") as f:
            pickle.dump(self.seen, f)
        self.seen = []

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")  # Lightning's advice (workers, logging, ...)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_lightning_ddp_spawn_every_sample_once_per_epoch(tmp_path, indexed_set):
    store = str(
        di.to_zarr(
            indexed_set.take(np.arange(N)), tmp_path / "t.zarr.zip", chunks=8, shard_chunks=2
        )
    )
    stored_idx = plain_group(store)["idx"][:]
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(Recorder(store, str(tmp_path)))  # no crash: both ranks stepped together

    orders = []
    for epoch in range(2):
        per_rank = []
        for rank in range(2):
            with open(tmp_path / f"rank{rank}-epoch{epoch}.pkl", "rb") as f:
                seen = pickle.load(f)
            for index, ids in seen:
                np.testing.assert_array_equal(ids, stored_idx[index])
            expected = dataloader_batches(N, 8, epoch, 2, rank, 2, batch_size=16, seed=0, even=True)
            assert len(seen) == len(expected) == 3
            for (index, _), want in zip(seen, expected, strict=True):
                np.testing.assert_array_equal(index, want)
            per_rank.append(np.concatenate([index for index, _ in seen]))
        every = np.concatenate(per_rank)
        np.testing.assert_array_equal(np.sort(every), np.arange(N))  # each sample exactly once
        orders.append(every)
    assert not np.array_equal(orders[0], orders[1])  # a new order in epoch 1


class Reloading(Recorder):
    """A new DataLoader (and dataset) every epoch, set to Lightning's epoch, as the README
    says to write it with ``reload_dataloaders_every_n_epochs``."""

    def train_dataloader(self) -> DataLoader:
        ds = TorchDataset(self.store, batch_size=16, arrays=("images", "labels", "index"))
        ds.set_epoch(lightning_epoch(self.trainer))  # the README's line
        return DataLoader(ds, batch_size=None)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Lightning's advice (workers, logging, ...)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch's pytree, inside Lightning
def test_lightning_reloading_the_dataloader_each_epoch_follows_its_epochs(tmp_path, indexed_set):
    """Lightning calls iter() on a reloaded DataLoader twice and drops the first iterator
    unstarted: that took an epoch, so Lightning's epoch k trained on daskimg's epoch k + 1."""
    store = str(di.to_zarr(indexed_set.take(np.arange(N)), tmp_path / "t.zarr.zip", chunks=8))
    stored_idx = plain_group(store)["idx"][:]
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=3, reload_dataloaders_every_n_epochs=1,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(Reloading(store, str(tmp_path)))
    for epoch in range(3):
        with open(tmp_path / f"rank0-epoch{epoch}.pkl", "rb") as f:
            seen = pickle.load(f)
        for index, ids in seen:
            np.testing.assert_array_equal(ids, stored_idx[index])
        expected = dataloader_batches(N, 8, epoch, 1, 0, 1, batch_size=16, seed=0)
        assert len(seen) == len(expected)
        for (index, _), want in zip(seen, expected, strict=True):
            np.testing.assert_array_equal(index, want)


class Resuming(Recorder):
    """The README's ``train_dataloader``: 2 persistent workers, the epoch set to the one
    Lightning trains next; a ``StatefulDataLoader`` when ``stateful`` (its state then goes
    into Lightning's checkpoints)."""

    def __init__(self, store: str, out: str, stateful: bool) -> None:
        super().__init__(store, out)
        self.stateful = stateful

    def train_dataloader(self) -> DataLoader:
        from torchdata.stateful_dataloader import StatefulDataLoader

        ds = TorchDataset(self.store, batch_size=16, arrays=("images", "labels", "index"))
        ds.set_epoch(lightning_epoch(self.trainer))
        kind = StatefulDataLoader if self.stateful else DataLoader
        return kind(ds, batch_size=None, num_workers=2, persistent_workers=True)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")  # Lightning's advice (workers, logging, ...)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch's pytree, inside Lightning
@pytest.mark.parametrize(
    ("stateful", "every_n_steps", "resume_after"),
    [(False, None, 6), (True, None, 6), (True, 2, 2), (True, 2, 6), (False, 2, 6)],
    ids=[
        "epoch-end",
        "epoch-end-stateful",
        "mid-epoch-stateful",
        "last-step-stateful",
        "last-step",
    ],
)
def test_lightning_resumed_fit_trains_on_the_uninterrupted_batches(
    tmp_path, indexed_set, stateful, every_n_steps, resume_after
):
    """A fit resumed from a checkpoint (a new process's dataset starts at epoch 0) trains on
    the batches an uninterrupted fit does: before the README's set_epoch line, the resumed
    epochs replayed epochs 0, 1, ... (a job restarted every epoch saw epoch 0's order each
    time). Six batches per epoch; the first fit stops after ``resume_after`` of them."""
    checkpoint = pytest.importorskip("pytorch_lightning.callbacks").ModelCheckpoint
    pytest.importorskip("torchdata")
    store = str(di.to_zarr(indexed_set.take(np.arange(N)), tmp_path / "t.zarr.zip", chunks=8))
    stored_idx = plain_group(store)["idx"][:]
    quiet = {
        "accelerator": "cpu", "devices": 1, "logger": False, "enable_progress_bar": False,
        "enable_model_summary": False,
    }  # fmt: skip
    saves = checkpoint(dirpath=tmp_path / "ck", every_n_train_steps=every_n_steps, save_top_k=-1)
    first = tmp_path / "first"
    first.mkdir()
    pl.Trainer(max_epochs=1, max_steps=resume_after, callbacks=[saves], **quiet).fit(
        Resuming(store, str(first), stateful)
    )
    (ckpt,) = [p for p in (tmp_path / "ck").iterdir() if f"step={resume_after}" in p.name]
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    pl.Trainer(max_epochs=3, enable_checkpointing=False, **quiet).fit(
        Resuming(store, str(resumed), stateful), ckpt_path=str(ckpt)
    )
    for epoch in range(3):
        expected = dataloader_batches(N, 8, epoch, 2, 0, 1, batch_size=16, seed=0)
        assert len(expected) == 6
        seen: list = []
        for out in (first, resumed):
            if (out / f"rank0-epoch{epoch}.pkl").exists():
                with open(out / f"rank0-epoch{epoch}.pkl", "rb") as f:
                    seen += pickle.load(f)
        for index, ids in seen:
            np.testing.assert_array_equal(ids, stored_idx[index])
        assert len(seen) == len(expected), epoch  # each batch once, across the two fits
        for (index, _), want in zip(seen, expected, strict=True):
            np.testing.assert_array_equal(index, want)


class _Ids(pl.LightningModule):
    """Predicts each sample's id from its pixels (the fixture's encoding)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)

    def predict_step(self, batch, batch_idx):
        return torch.from_numpy(decoded_ids(batch[0].numpy()))


@pytest.mark.filterwarnings("ignore::UserWarning")  # Lightning's advice (workers, logging, ...)
@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch's pytree, called by Lightning
@pytest.mark.parametrize("workers", [0, 2])
def test_lightning_predict_on_a_shuffled_dataset_without_index_is_refused(
    tmp_path, indexed_set, workers
):
    # Trainer.predict(DataLoader(TorchDataset(store))) returned the predictions in the
    # shuffled order; written back with order="store" they landed on other samples
    store = str(di.to_zarr(indexed_set.take(np.arange(N)), tmp_path / "p.zarr.zip", chunks=8))
    trainer = pl.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False
    )

    def loader(**kw):
        return DataLoader(
            TorchDataset(store, batch_size=16, **kw), batch_size=None, num_workers=workers
        )

    with pytest.raises(ValueError, match=r"Trainer.predict on a TorchDataset that shuffles"):
        trainer.predict(_Ids(), loader())
    got = torch.cat(trainer.predict(_Ids(), loader(shuffle=False))).numpy()
    np.testing.assert_array_equal(got, plain_group(store)["idx"][:])  # oracle: plain zarr
    shuffled = trainer.predict(_Ids(), loader(arrays=("images", "index")))  # placed by index
    assert sorted(torch.cat(shuffled).tolist()) == sorted(plain_group(store)["idx"][:].tolist())


class _PerRank(pl.callbacks.BasePredictionWriter):
    """Each rank's (index, ids) pairs in a file of its own, as a writer of predictions keeps
    them (rank 0 gathers them in a real one)."""

    def __init__(self, out: str) -> None:
        super().__init__("epoch")
        self.out = out

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices):
        with open(os.path.join(self.out, f"pred{trainer.global_rank}.pkl"), "wb") as f:
            pickle.dump([p.numpy() for p in predictions], f)


class _IndexedIds(_Ids):
    def predict_step(self, batch, batch_idx):
        images, index = batch
        return torch.stack([index, torch.from_numpy(decoded_ids(images.numpy()))], dim=1)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")  # Lightning's advice (workers, logging, ...)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch's pytree, called by Lightning
def test_lightning_ddp_predict_in_store_order_without_index_is_refused(tmp_path, indexed_set):
    # shuffle=False on 2 ranks: rank 0 predicted batches 0, 2, 4, ..., rank 1 the others;
    # gathered in rank order the rows were not in store order, and nothing said so
    store = str(di.to_zarr(indexed_set.take(np.arange(N)), tmp_path / "p.zarr.zip", chunks=8))
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False,
        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
        default_root_dir=tmp_path, callbacks=[_PerRank(str(tmp_path))],
    )  # fmt: skip

    def loader(**kw):
        return DataLoader(TorchDataset(store, batch_size=16, shuffle=False, **kw), batch_size=None)

    with pytest.raises(Exception, match=r"Trainer.predict on 2 ranks without 'index'"):
        trainer.predict(_Ids(), loader(), return_predictions=False)
    trainer.predict(_IndexedIds(), loader(arrays=("images", "index")), return_predictions=False)
    pairs = []
    for rank in range(2):
        with open(tmp_path / f"pred{rank}.pkl", "rb") as f:
            pairs += pickle.load(f)
    pairs = np.concatenate(pairs)
    np.testing.assert_array_equal(np.sort(pairs[:, 0]), np.arange(N))  # every sample once
    np.testing.assert_array_equal(pairs[:, 1], plain_group(store)["idx"][:][pairs[:, 0]])


class ResumingInProcess(Recorder):
    """The README's ``train_dataloader`` with a ``StatefulDataLoader`` and no workers; the
    batches of each epoch recorded at each step (a fit stopped mid-epoch ends none)."""

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        name = f"rank{self.global_rank}-epoch{self.current_epoch}.pkl"
        with open(os.path.join(self.out, name), "wb") as f:
            pickle.dump(self.seen, f)

    def on_train_epoch_end(self) -> None:
        self.seen = []

    def train_dataloader(self) -> DataLoader:
        from torchdata.stateful_dataloader import StatefulDataLoader

        ds = TorchDataset(self.store, batch_size=16, arrays=("images", "labels", "index"))
        ds.set_epoch(lightning_epoch(self.trainer))
        return StatefulDataLoader(ds, batch_size=None)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")  # Lightning's advice (workers, logging, ...)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch's pytree, inside Lightning
@pytest.mark.parametrize("reload", [0, 1])
@pytest.mark.parametrize("stop", [6, 9])  # the first epoch's last step; mid-epoch 1
def test_lightning_resumed_after_max_steps_trains_on_the_uninterrupted_batches(
    tmp_path, indexed_set, reload, stop
):
    """A fit stopped by max_steps (Lightning counts the epoch processed, not completed) and
    resumed from its last.ckpt: lightning_epoch gave one epoch more than Lightning trained,
    so the resumed fit trained an extra batch in the stopped epoch and every later epoch
    took the next one's order (with reload_dataloaders_every_n_epochs)."""
    checkpoint = pytest.importorskip("pytorch_lightning.callbacks").ModelCheckpoint
    pytest.importorskip("torchdata")
    store = str(di.to_zarr(indexed_set.take(np.arange(N)), tmp_path / "t.zarr.zip", chunks=8))
    quiet = {
        "accelerator": "cpu", "devices": 1, "logger": False, "enable_progress_bar": False,
        "enable_model_summary": False, "reload_dataloaders_every_n_epochs": reload,
    }  # fmt: skip
    first, resumed = tmp_path / "first", tmp_path / "resumed"
    first.mkdir()
    resumed.mkdir()
    saves = checkpoint(dirpath=tmp_path / "ck", save_last=True)
    pl.Trainer(max_steps=stop, callbacks=[saves], **quiet).fit(ResumingInProcess(store, str(first)))
    pl.Trainer(max_steps=18, enable_checkpointing=False, **quiet).fit(  # 3 epochs of 6
        ResumingInProcess(store, str(resumed)), ckpt_path=str(tmp_path / "ck" / "last.ckpt")
    )
    for epoch in range(3):  # the oracle: the plans of epochs 0, 1, 2, each batch once
        expected = dataloader_batches(N, 8, epoch, 1, 0, 1, batch_size=16, seed=0)
        seen: list = []
        for out in (first, resumed):
            if (out / f"rank0-epoch{epoch}.pkl").exists():
                with open(out / f"rank0-epoch{epoch}.pkl", "rb") as f:
                    seen += pickle.load(f)
        assert [i.tolist() for i, _ in seen] == [w.tolist() for w in expected], epoch
