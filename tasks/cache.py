"""Where Prefect keeps cached task results, and how: JSON only, refused unless we wrote it that way.

Prefect reads a cached result with the serializer named *inside the file*: a planted record saying
"pickle" (or a JSON serializer with a chosen decoder) would run code in the flow process. So:
- `SafeJSONSerializer` writes results as plain JSON (tasks/results.py: known dataclasses only);
- `CacheFolder` (the result storage) refuses, at read time, any record that is not exactly that
  serializer's output. Prefect then treats the entry as missing and the task recomputes, replacing it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Literal

from prefect.filesystems import LocalFileSystem
from prefect.serializers import Serializer
from pydantic import Field

from tasks.results import from_jsonable, to_jsonable

log = logging.getLogger(__name__)

SERIALIZER_TYPE = "dropout-lab-json"


class SafeJSONSerializer(Serializer):
    type: Literal["dropout-lab-json"] = Field(default=SERIALIZER_TYPE, frozen=True)

    def dumps(self, obj: Any) -> bytes:
        return json.dumps(to_jsonable(obj)).encode()

    def loads(self, blob: bytes) -> Any:
        return from_jsonable(json.loads(blob))


class UnsafeCacheEntry(ValueError):
    """A cache file that we did not write as plain JSON: never deserialised."""


def check_record(content: bytes, path: str) -> bytes:
    """`content` unchanged if it is a result record in our JSON format; UnsafeCacheEntry otherwise."""
    try:
        record = json.loads(content)
        serializer = record["metadata"]["serializer"]
    except (ValueError, TypeError, KeyError) as e:
        raise UnsafeCacheEntry(f"{path}: not a result record ({type(e).__name__})") from None
    if set(record) != {"metadata", "result"} or serializer != {"type": SERIALIZER_TYPE}:
        raise UnsafeCacheEntry(f"{path}: written with serializer {str(serializer)[:80]}, not {SERIALIZER_TYPE}")
    return content


class CacheFolder(LocalFileSystem):
    """Prefect's local result storage, reading back only what SafeJSONSerializer wrote."""

    _block_type_slug = "dropout-lab-cache-folder"

    # Prefect calls `read_path(path, _sync=True)` from sync code and `aread_path` from async code.
    def read_path(self, path: str, _sync: bool | None = None) -> bytes:
        return _checked(super().read_path(path, _sync=True), path)

    async def aread_path(self, path: str) -> bytes:
        return _checked(await super().aread_path(path), path)


def _checked(content: bytes, path: str) -> bytes:
    try:
        return check_record(content, path)
    except UnsafeCacheEntry as e:
        log.warning("ignoring cached result %s; recomputing", e)
        raise


def cache_options(cache_dir: str | Path) -> dict:
    """`task.with_options(**cache_options(dir))`: results persisted as safe JSON under `dir/results`.

    Prefect takes a storage block only once saved on the server: one block per folder, named by it."""
    basepath = str(Path(cache_dir).resolve() / "results")
    storage = CacheFolder(basepath=basepath)
    storage.save(f"results-{hashlib.sha256(basepath.encode()).hexdigest()[:16]}", overwrite=True)
    return {"result_storage": storage, "result_serializer": SafeJSONSerializer(), "persist_result": True}
