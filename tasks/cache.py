"""Prefect caching for the tasks: what a cached result's key covers, where it is kept, and how (JSON
only, refused unless we wrote it that way).

Prefect reads a cached result with the serializer named *inside the file*: a planted record saying
"pickle" (or a JSON serializer with a chosen decoder) would run code in the flow process. So:
- `SafeJSONSerializer` writes results as plain JSON (dropout_lab/results.py: known dataclasses only);
- every task's cache policy (`ResultOf`) reads the record at its key before Prefect does, and sets
  aside any record that is not exactly that serializer's output: Prefect then finds the entry missing
  and the task recomputes, replacing it.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from prefect.cache_policies import CachePolicy
from prefect.serializers import Serializer
from pydantic import Field

from dropout_lab.keys import code_hash, stable_hash
from dropout_lab.regular import NotRegular, read_regular
from dropout_lab.results import from_jsonable, to_jsonable

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


# A record is bounded before it is parsed: the largest real one (a 20-seed sweep's report) is a few MB,
# and JSON nested thousands deep would exhaust the parser's recursion (a planted record must cost nothing).
MAX_RECORD_BYTES = 64 << 20
MAX_NESTING = 64


def _nesting(text: str) -> int:
    """How deep brackets nest in JSON text, strings ignored (a linear scan, stopped past MAX_NESTING)."""
    depth = deepest = 0
    for token in re.finditer(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', text):
        t = token.group()
        if t in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_NESTING:
                break
        elif t in "]}":
            depth -= 1
    return deepest


def check_record(content: bytes, path: str) -> bytes:
    """`content` unchanged if it is a result record in our JSON format, of a bounded size and nesting
    (its result, itself JSON text, too); UnsafeCacheEntry otherwise."""
    if len(content) > MAX_RECORD_BYTES:
        raise UnsafeCacheEntry(f"{path}: {len(content) >> 20} MB, larger than any result record")
    try:
        text = content.decode()
        if _nesting(text) > MAX_NESTING:
            raise ValueError(f"nested deeper than {MAX_NESTING}")
        record = json.loads(text)
        serializer = record["metadata"]["serializer"]
        if isinstance(record.get("result"), str) and _nesting(record["result"]) > MAX_NESTING:
            raise ValueError(f"its result nested deeper than {MAX_NESTING}")
    except (ValueError, TypeError, KeyError, RecursionError) as e:
        raise UnsafeCacheEntry(f"{path}: not a result record ({type(e).__name__}: {str(e)[:80]})") from None
    if set(record) != {"metadata", "result"} or serializer != {"type": SERIALIZER_TYPE}:
        raise UnsafeCacheEntry(f"{path}: written with serializer {str(serializer)[:80]}, not {SERIALIZER_TYPE}")
    return content


def set_aside(path: Path, reason: str) -> None:
    """Move a record that cannot be read out of the way (kept as `*.unreadable` for inspection), so the
    task computes its result again and caching resumes: one logged line."""
    try:
        os.replace(path, path.with_name(path.name + ".unreadable"))
    except OSError:
        path.unlink(missing_ok=True)
    log.warning("cached result %s set aside (%s); computing it again", path.name[:12], reason)


def cache_options(cache_dir: str | Path) -> dict:
    """`task.with_options(**cache_options(dir))`: results persisted as safe JSON under `dir/results` (a
    folder, as Prefect takes one: no storage block is saved on the server)."""
    return {
        "result_storage": Path(cache_dir).resolve() / "results",
        "result_serializer": SafeJSONSerializer(),
        "persist_result": True,
    }


# --- cache keys ------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class ResultOf(CachePolicy):
    """A task's cache key: what identifies its result (`identity`, from the task's inputs) and the
    source of the project code that computes it (`code`: a module and every project module it
    imports). A stored result is a claim, not a fact: a record we did not write is set aside, and
    `trust(result, inputs)` says why a result cannot be used (its files gone, changed or somewhere
    else; None when it checks out); such a result is forgotten with one logged line before Prefect
    reads it, so the task itself runs again."""

    identity: Callable[[dict], Any] | None = None
    code: str = ""
    trust: Callable[[Any, dict], str | None] | None = None

    def compute_key(self, task_ctx, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs) -> str:
        key = stable_hash(self.identity(inputs), code_hash(self.code))
        forget_unless_trusted(task_ctx, key, lambda result: self.trust(result, inputs) if self.trust else None)
        return key


def forget_unless_trusted(task_ctx, key: str, problem: Callable[[Any], str | None]) -> None:
    storage = getattr(getattr(task_ctx, "result_store", None), "result_storage", None)
    if getattr(storage, "basepath", None) is None:
        return
    path = Path(storage.basepath) / key
    try:
        content = read_regular(path)  # a FIFO or link planted as a record would block or mislead Prefect's read
    except NotRegular as e:
        set_aside(path, str(e))
        return
    except OSError:
        return  # nothing cached: nothing to forget
    try:
        record = json.loads(check_record(content, key))
        result = SafeJSONSerializer().loads(record["result"].encode())
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        set_aside(path, f"{type(e).__name__}: {str(e)[:120]}")  # not ours, or not readable: out of the way
        return
    try:
        reason = problem(result)
    except Exception as e:  # a result of the wrong shape is no result
        reason = f"unreadable as this task's result ({type(e).__name__}: {e})"
    if reason:
        log.warning("ignoring cached result %s: %s; computing it again", key[:12], reason)
        path.unlink(missing_ok=True)


def error_of(state) -> BaseException | None:
    """The exception a failed task run's state holds (for retry conditions), or None."""
    data = state.data if isinstance(state.data, BaseException) else None
    if data is None:
        try:
            data = state.result(raise_on_failure=False)
        except Exception as e:
            data = e
    return data if isinstance(data, BaseException) else None
