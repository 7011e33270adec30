"""Read: image and volume files decoded lazily into dask arrays, with labels and metadata.

``decode`` (one file -> array), ``files`` (:func:`imread`: one task per block of files),
``imageset`` (:class:`ImageSet`), ``folder`` (:func:`from_folder`), ``csv``
(:func:`from_csv`), ``arrays`` (HDF5 / ``.npy`` / ``.npz`` as a row source).
"""

from .csv import from_csv
from .files import imread
from .folder import from_folder
from .imageset import ImageSet

__all__ = ["ImageSet", "from_csv", "from_folder", "imread"]
