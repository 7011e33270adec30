"""Read: image and volume files decoded lazily into dask arrays, with labels and metadata.

``fileio`` (opening one file safely), ``geometry`` (where a source lands in a sample),
``decode`` (one image -> array), ``volumes`` (one volume -> array, dtype kept), ``masks``
(one mask, with its image's geometry), ``boxes`` (source pixels <-> stored pixels),
``source`` (:class:`FileSource`: one task per block of files, every derived array from
the same tasks), ``files`` (:func:`imread`), ``imageset`` (:class:`ImageSet`), ``folder``
(:func:`from_folder`), ``csv`` (:func:`from_csv`), ``arrays`` (HDF5 / ``.npy`` / ``.npz``
as a row source), ``lazy`` (a user's dask array held to the block shapes it declares).
"""

from .csv import from_csv
from .files import imread
from .folder import from_folder
from .imageset import ImageSet

__all__ = ["ImageSet", "from_csv", "from_folder", "imread"]
