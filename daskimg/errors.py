"""Error types of daskimg.

Every class also inherits the builtin that fits, so ``except FileNotFoundError`` and
``except ValueError`` keep working for users who do not know daskimg's names.
"""

from __future__ import annotations

__all__ = [
    "ChecksumError",
    "DaskImgError",
    "DecodeError",
    "ForeignStoreError",
    "FormatVersionError",
    "IncompleteStoreError",
    "MetadataError",
    "NewerFormatError",
    "NoImagesFoundError",
    "ProcessLocalError",
    "ServerError",
    "StoreExistsError",
    "StoreLockedError",
    "UnsupportedStoreError",
]


class DaskImgError(Exception):
    """Base class of every error daskimg raises on purpose."""


class NoImagesFoundError(DaskImgError, FileNotFoundError):
    """A pattern, folder or CSV named no files."""


class DecodeError(DaskImgError, ValueError):
    """A file could not be decoded into an image or volume; the message names the file."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot decode {self.path!r}: {reason}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # keep (path, reason) across process and distributed-worker boundaries
        return (type(self), (self.path, self.reason))


class IncompleteStoreError(DaskImgError, OSError):
    """A store was not finished (the writer died or is still running)."""


class StoreExistsError(DaskImgError, FileExistsError):
    """The target of a write already exists and ``overwrite`` was not given."""


class StoreLockedError(DaskImgError, OSError):
    """Another writer holds the store."""


class FormatVersionError(DaskImgError, ValueError):
    """A store was written by a newer daskimg (or is not a daskimg store)."""


class NewerFormatError(FormatVersionError):
    """A sound store of a format version newer than this daskimg reads: not damage, upgrade
    daskimg to read it."""


class ForeignStoreError(FormatVersionError):
    """The path holds no daskimg store but another (a Zarr v2 store, a plain Zarr group, a
    store one folder deeper in a zip): not damage, said for what it is."""


class ChecksumError(DaskImgError, OSError):
    """A chunk's bytes do not match its checksum, or a chunk is missing; the message names it."""


class MetadataError(DaskImgError, ValueError):
    """A store's metadata is missing, unreadable or inconsistent; the message names the store
    and the array (or ``zarr.json``) and what is wrong."""


class UnsupportedStoreError(MetadataError):
    """A sound store in a layout daskimg does not read (another tool's codecs, compressed
    zip members, a frame this numcodecs cannot decompress): not damage, said for what it is."""


class ServerError(DaskImgError, OSError):
    """A server holding a store kept failing to answer (HTTP 5xx or 429, after retries), or
    answers no ranged requests: it says nothing about the stored bytes."""


class ProcessLocalError(DaskImgError, OSError):
    """A ``memory://`` object (fsspec's in-memory filesystem, which lives in one process)
    was asked for, or would be written, in a dask worker process other than the one
    holding it."""
