"""Feed: Keras 3 adapter — a ``keras.utils.PyDataset`` for ``model.fit``, ``evaluate``, ``predict``.

Import it as ``from daskimg.keras import KerasDataset``; keras is imported here only.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import keras
import numpy as np

from .feed.batches import INDEX, ReadStats
from .feed.checks import called_from, check_at_least
from .feed.indexed import IndexedBatches
from .feed.iterator import Transform
from .feed.plan import EpochPlan
from .feed.source import FeedSource, persisted, shown

__all__ = ["KerasDataset"]

#: ``(kind, spec)`` of one part of a batch: ``("one", name)``, ``("tuple", names)``,
#: ``("dict", {model name: array name})``
_Part = tuple[str, Any]


class KerasDataset(keras.utils.PyDataset):
    """Batches for ``model.fit`` / ``evaluate`` / ``predict``, read by index, reshuffled every epoch.

    Batch ``i`` of an epoch is batch ``i`` of the chunk-aware plan of ``(seed, epoch)``
    (:func:`daskimg.feed.shuffle.plan_epoch`, the order :class:`~daskimg.feed.BatchIterator`
    yields). Keras may ask for the batches in any order — ``fit`` shuffles batch indices by
    default — and ``ds[i]`` reads only the chunks batch ``i`` draws from, keeping the
    ``cache_chunks`` most recently used chunks, so memory stays bounded whatever the order.
    Asking for ``ds[i]`` twice in an epoch gives the same batch; every sample is in exactly
    one batch of an epoch (``drop_last`` aside).

    Parameters
    ----------
    source
        A store path, an ImageSet or dask arrays, as for :class:`~daskimg.feed.BatchIterator`.
    batch_size
        Samples per batch.
    arrays
        What each batch holds, as ``(inputs,)``, ``(inputs, targets)`` or
        ``(inputs, targets, sample_weights)``; each part is a store array name, a tuple of
        names, or a dict ``{model input or output name: store array name}``:

        - ``("images", "labels")`` (default) gives ``(x, y)``;
        - ``(("images", "bbox"), "labels")`` gives ``((x1, x2), y)``;
        - ``({"pixels": "images", "box": "bbox"}, {"class": "labels"})`` gives
          ``({"pixels": x1, "box": x2}, {"class": y})`` for a functional model whose inputs
          are named ``"pixels"`` and ``"box"`` and whose output is named ``"class"``;
        - ``("images",)`` gives ``(x,)``, for ``predict``.

        ``"index"`` is each sample's store index (int64). String arrays (``paths``) cannot
        become tensors and are refused: carry ``"index"`` and look them up.
    shuffle
        Draw a new chunk-aware order every epoch (True) or keep store order (False). Default
        (None): True when the batches hold targets (a training or evaluation set, where
        the order only affects learning: ``evaluate`` counts each sample once either way),
        False for inputs only, so that ``model.predict(KerasDataset(store,
        arrays=("images",), ...))`` returns row ``k`` for sample ``k``. ``predict`` on a
        dataset that shuffles is refused (its rows would come back in the shuffled order,
        and written back land on other samples): pass ``shuffle=False``. ``fit`` on inputs
        only left at the default (an autoencoder, a custom ``compute_loss``) warns once:
        every epoch would be the same batches; pass ``shuffle=True`` to train on it.
    seed
        Seed of the order (non-negative int); None draws one at construction, kept in
        :meth:`state_dict` and in copies sent to other processes.
    buffer_chunks
        Chunks whose samples are mixed together (see ``plan_epoch``).
    drop_last
        Leave out the last, partial batch.
    transform
        ``transform(batch: dict, rng) -> dict`` on each batch, as for ``BatchIterator``;
        ``rng`` derives from ``(seed, epoch, batch)``, so ``ds[i]`` is the same batch
        whenever it is asked for.
    scale
        Divide ``images`` by this, as float32. ``"auto"`` (default): by 255 for uint8 and
        65535 for uint16 (float32 in 0..1), by 1 for float stores (already scaled: a float
        store in 0..1 was divided by 255 too) and for volumes (their values are kept);
        None keeps them as stored.
    workers, use_multiprocessing, max_queue_size
        Read batches in the background in ``workers`` threads, or spawned processes with
        ``use_multiprocessing=True`` (each re-opens the store; ``transform`` must then be
        picklable). Keras 3's own enqueuer would keep up to ``max_queue_size`` batches across
        every epoch boundary (the batches read for the model-building peek and the tail of
        each epoch are served at the start of the next one), so epochs would repeat some
        batches and miss others; this class therefore tells Keras ``workers=1`` and runs
        the workers itself: when Keras asks for the batches in order (``predict``,
        ``evaluate``, ``fit(shuffle=False)``) they read up to ``min(workers,
        max_queue_size)`` batches ahead; in a shuffled order they cannot know the next
        index, and a batch is read when asked for, its chunks in parallel (``threads``).
    cache_chunks
        Loaded chunks kept. Default ``3 * max(buffer_chunks, ceil(batch_size / chunk_len))``:
        three chunk groups (a batch draws from its group and the one before; batches read
        ahead from the next), about what ``BatchIterator`` holds. That is about
        ``cache_chunks * chunk_len`` decoded samples of each array read chunk-wise (lz4,
        zstd and uncompressed stores, dask blocks); JPEG and one-sample-per-chunk stores
        keep their chunks encoded and decode only the rows of each batch. Asked for in
        order, every chunk is read once per epoch; in the random order ``fit`` asks for by
        default, a chunk is read again when one of its batches comes after it left the
        cache: with ``G`` groups in the store, about ``(1 - 3 / G) * buffer_chunks *
        chunk_len / batch_size`` reads per chunk (see :meth:`read_stats`;
        ``fit(shuffle=False)`` reads each chunk once, and the order is still reshuffled
        every epoch by the plan).
    threads
        Threads that load the chunks of a batch in parallel.
    storage_options
        For a store URL (``s3://...``), as for :func:`daskimg.open_zarr`.

    Notes
    -----
    *Epochs.* ``ds[i]`` serves epoch :attr:`epoch`. Keras does not tell a dataset which
    epoch it runs; the dataset moves to the next epoch by itself once every batch of the
    current one has been served, at ``on_epoch_end`` / ``on_epoch_begin`` (which Keras
    calls around every pass, also around the one-batch peek that builds a model before
    its first ``fit``, which therefore does not count as an epoch). To start elsewhere,
    ``fit(..., initial_epoch=k)`` after ``ds.set_epoch(k)``, or pass
    ``callbacks=[ds.epoch_callback()]``, which follows Keras's epoch number (also when
    ``keras.callbacks.BackupAndRestore`` resumes a run).

    *Resuming.* :meth:`state_dict` records the epoch, the batches of it already served
    (never the batch Keras reads to build an unbuilt model — told on the torch and JAX
    backends, where Keras reads it in the calling thread; with ``epoch_callback``, those
    served since training began, on any backend) and the settings that
    shape the order; :meth:`load_state_dict` refuses a state saved with other settings. After loading, :attr:`epoch` is the epoch to continue: the
    state's, or the next one when the state was saved after its epoch's last batch (then
    ``state["epoch"]`` is one behind). A state saved in the middle of an epoch leaves the rest
    of it: ``len(ds)`` is the number of batches not yet served (fewer than
    :attr:`full_epoch`) and ``ds[j]`` the ``j``-th of them. Keras fixes the batches per
    epoch when ``fit`` starts, for every epoch of the call, so finish that epoch with its own
    call, then continue::

        ds.load_state_dict(state)
        if len(ds) < ds.full_epoch:  # the rest of an epoch
            model.fit(ds, initial_epoch=ds.epoch, epochs=ds.epoch + 1)
        model.fit(ds, initial_epoch=ds.epoch, epochs=total)

    (``epoch_callback()`` refuses, when it begins, a ``fit`` that would run further epochs
    with the rest's batch count; without it the dataset stops such a ``fit`` when its
    second epoch begins.)

    Examples
    --------
    >>> from daskimg.keras import KerasDataset  # doctest: +SKIP
    >>> train = KerasDataset("out/train.zarr.zip", batch_size=32)  # doctest: +SKIP
    >>> valid = KerasDataset("out/valid.zarr.zip", batch_size=32, shuffle=False)  # doctest: +SKIP
    >>> model.fit(train, validation_data=valid, epochs=10)  # doctest: +SKIP
    >>> model.fit(train, initial_epoch=10, epochs=20, callbacks=[train.epoch_callback()])  # doctest: +SKIP
    >>> test = KerasDataset("out/test.zarr.zip", batch_size=64, arrays=("images",))  # doctest: +SKIP
    >>> predictions = model.predict(test)  # row k is sample k: shuffle defaults to False  # doctest: +SKIP
    """

    def __init__(
        self,
        source: Any,
        *,
        batch_size: int,
        arrays: Sequence[Any] = ("images", "labels"),
        shuffle: bool | None = None,
        seed: int | None = 0,
        buffer_chunks: int = 8,
        drop_last: bool = False,
        transform: Transform | None = None,
        scale: float | str | None = "auto",
        workers: int = 1,
        use_multiprocessing: bool = False,
        max_queue_size: int = 10,
        cache_chunks: int | None = None,
        threads: int = 2,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        # Keras's enqueuer is never used (see ``workers`` above): it calls ``ds[i]`` itself
        super().__init__(workers=1, use_multiprocessing=False, max_queue_size=max_queue_size)
        _check_args(batch_size, buffer_chunks, workers, max_queue_size, threads, cache_chunks)
        _check_flags(drop_last=drop_last, use_multiprocessing=use_multiprocessing, shuffle=shuffle)
        if seed is None:
            seed = int(np.random.SeedSequence().entropy)  # type: ignore[arg-type]
        check_at_least("seed", seed, 0)
        self._parts = _parse_arrays(arrays)
        names = _leaves(self._parts)
        self.source = source
        self.batch_size = batch_size
        self.shuffle = len(self._parts) > 1 if shuffle is None else shuffle
        self._order_said = shuffle is not None  # store order chosen, or said to fit once
        self.seed = seed
        self.buffer_chunks = buffer_chunks
        self.drop_last = drop_last
        self.read_workers = workers
        self.read_processes = use_multiprocessing
        self._told: int | None = None  # the length Keras last read (num_batches)
        self._fitting = False  # the latest pass over it is a fit's own (not one within it)
        self._data = IndexedBatches(
            source,
            names,
            batch_size=batch_size,
            seed=seed,
            shuffle=self.shuffle,
            buffer_chunks=buffer_chunks,
            drop_last=drop_last,
            transform=transform,
            scale=scale,
            cache_chunks=cache_chunks,
            threads=threads,
            storage_options=storage_options,
            workers=workers,
            processes=use_multiprocessing,
        )
        _refuse_strings(names, self._data.batches.reader.source)
        if use_multiprocessing:
            self._data.check_picklable()
            for name in persisted(self._data.batches.reader.source.lazy)[:1]:
                raise ValueError(
                    f"array {name!r} is persisted on a distributed cluster (.persist()): its "
                    "chunks live there, and the worker processes of use_multiprocessing=True "
                    "cannot reach the cluster through this process's client. Use workers=N "
                    "threads, feed from a store (to_zarr, then KerasDataset(path, ...)), or "
                    "do not persist it"
                )

    @property
    def workers(self) -> int:
        """1: what Keras sees, so that it calls ``ds[i]`` itself (see ``workers`` above)."""
        return 1

    @workers.setter
    def workers(self, value: int) -> None:
        raise AttributeError(
            "KerasDataset runs its workers itself (Keras's own would carry batches across "
            "epochs): pass workers= (and use_multiprocessing=) when creating it"
        )

    @property
    def use_multiprocessing(self) -> bool:
        """False: what Keras sees (see ``workers`` above)."""
        return False

    @use_multiprocessing.setter
    def use_multiprocessing(self, value: bool) -> None:
        raise AttributeError(
            "KerasDataset runs its worker processes itself: pass use_multiprocessing= "
            "(and workers=) when creating it"
        )

    @property
    def scale(self) -> float | str | None:
        """What ``images`` are divided by (None: as stored)."""
        return self._data.batches.scale

    @property
    def transform(self) -> Transform | None:
        """The transform applied to each batch."""
        return self._data.batches.transform

    @property
    def epoch(self) -> int:
        """The epoch ``ds[i]`` serves (see Notes)."""
        return self._data.epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._data.epoch = value

    def plan(self, epoch: int | None = None) -> EpochPlan:
        """The plan of ``epoch`` (default: the current one): ``plan().batches[b]`` are the
        store indices of plan batch ``b`` (``ds[i]`` is plan batch ``i`` unless a state
        loaded mid-epoch left some out)."""
        return self._data.plan(epoch)

    def __repr__(self) -> str:
        return (
            f"KerasDataset({shown(self.source)}, batch_size={self.batch_size}, "
            f"batches={len(self)}, arrays={_leaves(self._parts)}, shuffle={self.shuffle}, "
            f"seed={self.seed}, epoch={self.epoch})"
        )

    # -- the PyDataset protocol -------------------------------------------------------
    def __len__(self) -> int:
        return len(self._data)

    @property
    def num_batches(self) -> int:
        """Batches in the current epoch, ``len(ds)`` (Keras asks for this)."""
        n = len(self)
        self._told = n  # what Keras last read (a fit fixes its steps when it begins)
        return n

    @property
    def full_epoch(self) -> int:
        """Batches in a whole epoch (``len(ds)`` is fewer after a state loaded mid-epoch)."""
        return int(self._data.batches.num_batches)

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"batch index must be an int, got {index!r}")
        # the batch Keras reads to build a model (fit, evaluate, predict of an unbuilt one)
        # is trained on by no step: not served, or a state saved in the first epoch would
        # leave one batch out, and the peek could take an epoch's last batch
        peek = called_from(("_symbolic_build",), "keras", stop=("fit", "evaluate", "predict"))
        depth = min(self.read_workers, self.max_queue_size)
        return _structure(self._parts, self._data.read(index, depth=depth, served=not peek))

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        """The rest of the current epoch in order; then the next epoch is selected."""
        if self._fitting and called_from(("fit",), "keras"):
            self._refuse_inside_fit("iterating over this KerasDataset")
        for i in range(len(self)):
            yield self[i]
        self.on_epoch_end()

    def on_epoch_begin(self) -> None:
        """Keras calls this before each pass: move on if the current epoch was served whole.

        Refuses ``model.predict`` on a shuffled dataset (its rows would come back in the
        shuffled order, with nothing to say which sample each belongs to), and a later epoch
        of a ``fit`` that began with the rest of a resumed epoch (Keras keeps that many
        steps for every epoch of the call)."""
        own = called_from(("fit",), "keras", stop=("evaluate", "predict"))  # fit's own pass
        within = not own and called_from(("fit",), "keras")  # evaluate/predict in a fit
        if within and self._fitting:
            self._refuse_inside_fit("model.evaluate or predict on this KerasDataset")
        self._fitting = own or (within and self._fitting)
        self._data.advance_if_served()
        told = self._told
        if told is not None and told != len(self) and called_from(("fit",), "keras"):
            # a fit that began with the rest of a resumed epoch keeps that many steps for
            # every epoch: the later ones would be cut short (24 of 40 samples each)
            raise ValueError(
                f"this fit runs {told} batches per epoch (the length Keras read when it "
                f"began: the rest of a resumed epoch), but epoch {self.epoch} has "
                f"{len(self)}: {len(self) - told} batches of every later epoch would never "
                "be trained on. The resumed epoch is finished; go on with "
                f"fit(ds, initial_epoch={self.epoch}, epochs=...). A resumed epoch's rest "
                "needs a fit of its own (fit(ds, initial_epoch=ds.epoch, epochs=ds.epoch + 1))"
            )
        if not (self.shuffle or self._order_said) and called_from(
            ("fit",), "keras", stop=("evaluate",)
        ):
            # inputs only (an autoencoder, a custom compute_loss) default to store order,
            # for predict: trained on, every epoch would be the same batches, without a word
            self._order_said = True
            warnings.warn(
                "fit on a KerasDataset of inputs only, which keeps store order (shuffle "
                "defaults to False there, so that predict returns row k for sample k): every "
                "epoch has the same batches in the same order. Pass shuffle=True to train on "
                "it, or shuffle=False to keep the order and silence this",
                UserWarning,
                stacklevel=2,
            )
        batches = self._data.batches
        n = batches.reader.source.n
        partial = len(self) < self.full_epoch
        dropped = batches.drop_last and n % batches.batch_size
        if not self.shuffle and (partial or dropped) and called_from(("predict",), "keras"):
            # row k is sample k only over a whole epoch in store order
            raise ValueError(
                "model.predict on this KerasDataset would not return one row per sample, "
                "row k for sample k: "
                + (
                    f"a state loaded mid-epoch leaves {len(self)} of its {self.full_epoch} "
                    "batches (row 0 would be a later sample)"
                    if partial
                    else f"drop_last=True leaves out the last {n % batches.batch_size} of the "
                    f"{n} samples (no rows for them)"
                )
                + ". Predict from a fresh KerasDataset of inputs only (drop_last=False)"
            )
        if self.shuffle and called_from(("predict",), "keras"):
            raise ValueError(
                "model.predict on a KerasDataset that shuffles (shuffle defaults to True when "
                "the batches hold targets) would return the predictions in a shuffled order: "
                "row k would not be sample k, and written back they would land on other "
                "samples. Predict from one in store order: KerasDataset(path, batch_size=..., "
                "arrays=('images',)) or shuffle=False"
            )

    def _refuse_inside_fit(self, doing: str) -> None:
        """Refuse a pass over this dataset from inside its own ``fit``'s epoch (a callback's
        ``evaluate(train)``, a loop over it): served whole, the epoch would move on, and
        the ``fit``'s remaining steps would read the next epoch's batches (a quarter of the
        samples trained twice, as many never). At the epoch's end (validation on it) it is
        served whole already: allowed."""
        progress = self._data.progress
        if 0 < len(progress.served) < len(self):
            raise ValueError(
                f"{doing} in the middle of its own fit's epoch ({len(progress.served)} of "
                f"{len(self)} batches trained on): it would serve the rest of the epoch, "
                "which would then move on, and the fit's remaining steps would read the next "
                "epoch's batches (samples trained twice, others never). Evaluate a "
                "KerasDataset of its own over the same store: KerasDataset(path, "
                "batch_size=..., shuffle=False)"
            )

    def on_epoch_end(self) -> None:
        """Keras calls this after each pass: move on if the current epoch was served whole."""
        self._data.advance_if_served()

    # -- epochs and state -------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Serve epoch ``epoch`` from now on (its order is fixed by ``(seed, epoch)``), whole."""
        check_at_least("epoch", epoch, 0)
        self._data.set_epoch(int(epoch))

    def epoch_callback(self) -> keras.callbacks.Callback:
        """A Keras callback that sets this dataset's epoch to Keras's epoch number.

        Pass it to ``fit(..., callbacks=[ds.epoch_callback()])`` so that
        ``initial_epoch=k`` (or ``BackupAndRestore`` resuming at epoch ``k``) reads epoch
        ``k``'s order, and a mid-epoch :meth:`state_dict` counts only the batches of the
        ``fit`` (not those read by hand before it).
        """
        return _EpochCallback(self)

    def start_training(self) -> None:
        """A ``fit`` starts: no batch of this epoch has been trained on in it yet.

        Called by :meth:`epoch_callback`'s callback at ``on_train_begin``; ``fit`` asks for
        all ``len(ds)`` batches of its first epoch.
        """
        self._data.start_training()

    def state_dict(self) -> dict[str, Any]:
        """The epoch, the batches of it already served, and the settings that shape the order."""
        return self._data.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state``: the rest of its epoch, then the following epochs.

        :attr:`epoch` is then the epoch to continue (the next one for a state saved after
        its epoch's last batch), ``len(ds)`` the batches left of it; see the class Notes for
        the two ``fit`` calls a mid-epoch state needs. Raises ValueError, naming the
        setting, when the state was saved with another source, seed, batch size, shuffle,
        buffer_chunks or drop_last: its epoch would be cut into other batches, and resuming
        would repeat or miss samples.
        """
        self._data.load_state_dict(state)

    def read_stats(self) -> ReadStats:
        """What has been read so far: samples delivered and loaded, chunk loads, cache peaks.

        Each process has its own counts (with ``use_multiprocessing``, the workers' reads
        are not counted here).
        """
        return self._data.stats()

    def close(self) -> None:
        """Stop background threads or processes and drop the cached chunks."""
        data = getattr(self, "_data", None)  # None if __init__ failed half-way
        if data is not None:
            data.close()

    def __del__(self) -> None:
        self.close()


class _EpochCallback(keras.callbacks.Callback):
    """Sets a :class:`KerasDataset`'s epoch from Keras's (see ``epoch_callback``)."""

    def __init__(self, data: KerasDataset) -> None:
        super().__init__()
        self.data = data

    def _param(self, name: str) -> Any:
        """A value of the fit Keras runs (``steps``, ``epochs``), or None."""
        return (getattr(self, "params", None) or {}).get(name)

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        steps = self._param("steps")
        if steps is not None and steps != len(self.data):
            # Keras walks its batch order on across short epochs; a new epoch plan at each
            # of them would repeat some samples and never show others
            raise ValueError(
                f"epoch_callback() makes each Keras epoch one of the dataset's epochs, so fit "
                f"must take all len(ds)={len(self.data)} batches per epoch; steps_per_epoch="
                f"{steps} would repeat and miss samples. Leave steps_per_epoch out, or drop "
                "the callback: the dataset's epochs then advance by themselves each time Keras "
                "has read all its batches"
            )
        if steps is not None and steps < self.data.full_epoch:
            # the rest of a resumed epoch: Keras would keep its batch count for every epoch
            # of this fit, cutting the following ones short
            epochs = self._param("epochs")
            if epochs is not None and epochs - self.data.epoch > 1:
                raise ValueError(
                    f"the dataset holds the rest of epoch {self.data.epoch} ({steps} of "
                    f"{self.data.full_epoch} batches, from load_state_dict), and fit would run "
                    f"{epochs - self.data.epoch} epochs: Keras keeps {steps} batches for each, "
                    "so the later epochs would be cut short. Finish the epoch in its own call, "
                    f"fit(ds, initial_epoch={self.data.epoch}, epochs={self.data.epoch + 1}, "
                    f"...), then fit(ds, initial_epoch={self.data.epoch + 1}, epochs={epochs}, ...)"
                )
        self.data.start_training()

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        if epoch != self.data.epoch:
            self.data.set_epoch(epoch)
        steps = self._param("steps")
        if steps is not None and steps != len(self.data):
            raise ValueError(
                f"fit runs {steps} batches per epoch but epoch {epoch} of the dataset has "
                f"{len(self.data)}: some of its samples would be repeated or never seen. A fit "
                "that starts with the rest of a resumed epoch must end with it: "
                f"fit(ds, initial_epoch=k, epochs=k + 1), then fit(ds, initial_epoch=k + 1, ...)"
            )


# -- arrays= ------------------------------------------------------------------------------
def _parse_arrays(arrays: Any) -> tuple[_Part, ...]:
    """``arrays`` as checked parts; see the ``arrays`` parameter of :class:`KerasDataset`."""
    form = (
        "arrays is (inputs,), (inputs, targets) or (inputs, targets, sample_weights), each a "
        "store array name, a tuple of names or a dict {model input name: array name}, e.g. "
        '({"pixels": "images"}, "labels")'
    )
    if isinstance(arrays, (str, Mapping)) or not isinstance(arrays, Sequence):
        raise ValueError(f"{form}; got {arrays!r}")
    if not 1 <= len(arrays) <= 3:
        raise ValueError(f"{form}; got {len(arrays)} parts: {arrays!r}")
    parts: list[_Part] = []
    for part in arrays:
        if isinstance(part, str):
            parts.append(("one", part))
        elif isinstance(part, Mapping):
            bad = [k for k, v in part.items() if not isinstance(k, str) or not isinstance(v, str)]
            if not part or bad:
                raise ValueError(f"{form}; the dict {part!r} must map names to array names")
            parts.append(("dict", dict(part)))
        elif isinstance(part, Sequence) and part and all(isinstance(n, str) for n in part):
            parts.append(("tuple", tuple(part)))
        else:
            raise ValueError(f"{form}; got the part {part!r}")
    return tuple(parts)


def _structure(parts: Sequence[_Part], batch: Mapping[str, np.ndarray]) -> tuple[Any, ...]:
    """``batch`` in the form ``parts`` asks for: arrays, tuples of them, dicts of them."""
    out: list[Any] = []
    for kind, spec in parts:
        if kind == "one":
            out.append(batch[spec])
        elif kind == "tuple":
            out.append(tuple(batch[n] for n in spec))
        else:
            out.append({key: batch[n] for key, n in spec.items()})
    return tuple(out)


def _leaves(parts: Sequence[_Part]) -> list[str]:
    names: list[str] = []
    for kind, spec in parts:
        if kind == "one":
            names.append(spec)
        elif kind == "tuple":
            names.extend(spec)
        else:
            names.extend(spec.values())
    return names


def _refuse_strings(names: Sequence[str], src: FeedSource) -> None:
    strings = [n for n in names if n != INDEX and src.dtype(n).kind in "OSUT"]
    if strings:
        raise TypeError(
            f"arrays {strings} hold strings, which Keras cannot turn into tensors; "
            'put "index" in arrays and look them up, e.g. '
            f"di.open_zarr(store).arrays[{strings[0]!r}][index]"
        )


def _check_args(
    batch_size: int,
    buffer_chunks: int,
    workers: int,
    max_queue_size: int,
    threads: int,
    cache_chunks: int | None,
) -> None:
    for name, v, lo in (
        ("batch_size", batch_size, 1),
        ("buffer_chunks", buffer_chunks, 1),
        ("workers", workers, 1),
        ("max_queue_size", max_queue_size, 1),
        ("threads", threads, 1),
    ):
        check_at_least(name, v, lo)
    if cache_chunks is not None:
        check_at_least("cache_chunks", cache_chunks, 1)


def _check_flags(*, drop_last: bool, use_multiprocessing: bool, shuffle: bool | None) -> None:
    for name, flag in (("drop_last", drop_last), ("use_multiprocessing", use_multiprocessing)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be True or False, got {flag!r}")
    if shuffle is not None and not isinstance(shuffle, bool):
        raise ValueError(f"shuffle must be True, False or None, got {shuffle!r}")
