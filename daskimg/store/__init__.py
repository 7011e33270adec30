"""Store: one checksummed, versioned Zarr v3 store per split, written atomically and read back checked.

``format`` (the on-disk format: attributes, arrays, checks), ``location`` (where a store
lives: lock, staging, publish), ``codecs`` and ``jpeg`` (chunk codecs), ``reader`` (the
checked chunk reader), ``write`` (:func:`to_zarr`), ``open`` (:func:`open_zarr`),
``convert`` (arrays on disk -> store).
"""

from .convert import convert
from .format import FORMAT_VERSION
from .location import store_kind
from .open import open_zarr, read_attrs
from .write import to_zarr

__all__ = ["FORMAT_VERSION", "convert", "open_zarr", "read_attrs", "store_kind", "to_zarr"]
