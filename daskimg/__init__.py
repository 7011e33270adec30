"""daskimg: train on image libraries far larger than RAM.

read (``imread``, ``from_folder``, ``from_csv``) -> store (``to_zarr``, ``open_zarr``)
-> feed (``BatchIterator``) -> write back (``ArrayWriter``).
"""

from importlib.metadata import PackageNotFoundError, version

from . import storeinfo, testing, transforms
from .feed import BatchIterator
from .read import ImageSet, from_csv, from_folder, imread
from .store import open_zarr, to_zarr
from .writeback import ArrayWriter

try:
    __version__ = version("daskimg")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "ArrayWriter",
    "BatchIterator",
    "ImageSet",
    "__version__",
    "from_csv",
    "from_folder",
    "imread",
    "open_zarr",
    "storeinfo",
    "testing",
    "to_zarr",
    "transforms",
]
