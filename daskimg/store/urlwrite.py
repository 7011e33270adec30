"""Store: writing a ``*.zarr`` folder in place at a URL (object storage has no rename).

:meth:`daskimg.store.location.Location.open_in_place` first replaces the root
``zarr.json`` by :data:`UNFINISHED_ROOT` (``complete: false``) and removes every other
object (:func:`clear_url`); zarr then writes through :class:`RootLast`, which holds the
root's writes back until the final root says ``complete: true``. A killed write opens as
unfinished, never as a store that looks complete. :func:`dir_state` tells what a URL
folder holds.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from zarr.storage import WrapperStore

__all__ = ["UNFINISHED_ROOT", "RootLast", "clear_url", "dir_state"]

#: the root a URL folder holds while it is written
UNFINISHED_ROOT = {
    "zarr_format": 3,
    "node_type": "group",
    "attributes": {"daskimg": {"format_version": 1, "num_samples": 0, "complete": False}},
}


class RootLast(WrapperStore):
    """A zarr store that holds back writes of the root ``zarr.json`` (see open_in_place)."""

    def __init__(self, store: Any) -> None:
        super().__init__(store)
        self.root: bytes | None = None

    async def set(self, key: str, value: Any) -> None:
        if key == "zarr.json":
            self.root = value.to_bytes()
            return
        await self._store.set(key, value)

    async def set_if_not_exists(self, key: str, value: Any) -> None:
        if key == "zarr.json":
            if self.root is None:
                self.root = value.to_bytes()
            return
        await self._store.set_if_not_exists(key, value)

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        if key == "zarr.json" and self.root is not None and byte_range is None:
            return prototype.buffer.from_bytes(self.root)
        return await self._store.get(key, prototype, byte_range)

    async def exists(self, key: str) -> bool:
        if key == "zarr.json":
            return self.root is not None
        return bool(await self._store.exists(key))

    async def delete_dir(self, prefix: str) -> None:
        """Nothing to delete: open_in_place cleared every object but the placeholder root."""

    async def delete(self, key: str) -> None:
        if key != "zarr.json":
            await self._store.delete(key)


def dir_state(fs: Any, key: str) -> str:
    """``"absent"``, ``"complete"``, ``"incomplete"`` (a daskimg store) or ``"other"``."""
    try:
        meta = json.loads(fs.cat_file(key + "/zarr.json"))
    except FileNotFoundError:
        return "other" if fs.exists(key) else "absent"
    except ValueError:
        return "other"
    attrs = (meta.get("attributes") or {}).get("daskimg") if isinstance(meta, dict) else None
    if not isinstance(attrs, dict):
        return "other"
    return "complete" if attrs.get("complete") is True else "incomplete"


def clear_url(fs: Any, key: str) -> None:
    """Remove a store folder at a URL, its root ``zarr.json`` first (so it stops looking like a store)."""
    fs.invalidate_cache(key)
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(key + "/zarr.json")
    if fs.exists(key):
        fs.rm(key, recursive=True)
    fs.invalidate_cache(key)
