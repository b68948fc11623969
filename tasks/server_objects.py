"""Objects on the Prefect server that concurrent runs each create on first use (a device's slot
limit, a result-storage block's type and schema): read it; if it is missing create it; if another run
created it in between, read it again. Prefect's own `Block.save` reads then creates with no such
retry, so two runs starting together on a fresh server failed with `ObjectAlreadyExists`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import httpx
from prefect.blocks.core import Block
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

T = TypeVar("T")


def read_or_create(read: Callable[[], T], create: Callable[[], object]) -> T:
    """`read()`, creating the object first when it is missing; a clash with a run that created it
    meanwhile (409, or 500 from SQLite's unique index) is no error: the object now exists."""
    try:
        return read()
    except ObjectNotFound:
        try:
            create()
        except ObjectAlreadyExists:
            pass
        except httpx.HTTPStatusError as e:
            if e.response.status_code != 500:
                raise
        return read()  # raises if it really is missing


def register_block_type(block: type[Block]) -> None:
    """`block.register_type_and_schema()`, safe when another process registers it at the same moment
    (its read-then-create raises for the second of two)."""
    try:
        block.register_type_and_schema()
    except ObjectAlreadyExists:
        block.register_type_and_schema()  # both now exist, so this only reads them
