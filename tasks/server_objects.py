"""Objects on the Prefect server that concurrent runs each create on first use (a device's slot limit,
a block's type): read it; if it is missing create it; if another run created it in between, read it
again. Prefect's own `Block.save` reads then creates with no such retry, so two runs starting together
on a fresh server failed with `ObjectAlreadyExists`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar
from uuid import UUID

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


def save_block(block: Block, name: str) -> UUID:
    """`block.save(name, overwrite=True)`, safe when another process saves a block of the same type at
    the same moment: Prefect registers the block's type by read-then-create, so the second of two gets
    `ObjectAlreadyExists`; saving again then finds the type (a clash of the documents themselves is
    what `overwrite` already handles)."""
    try:
        return block.save(name, overwrite=True)
    except ObjectAlreadyExists:
        return block.save(name, overwrite=True)
