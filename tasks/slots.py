"""Device slots: how many training processes may run at once on a device, as a Prefect global
concurrency limit per machine and device, so every flow run, served deployment, worker and Dask task
on that machine shares it (a module-level semaphore would limit one process only)."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.context import ConcurrencyContext
from prefect.concurrency.sync import concurrency
from prefect.runtime import flow_run

from dropout_lab.config import counted
from dropout_lab.naming import slug
from dropout_lab.runtime.temporary_server import TEMPORARY_SERVER_ENV
from tasks.reclaimed import tell_watcher
from tasks.server_objects import read_or_create

_creating = threading.Lock()


def slot_name(device: str) -> str:
    """`dropout-lab-HOST-cpu`, `dropout-lab-HOST-cuda-0`: devices belong to a machine."""
    return f"dropout-lab-{slug(socket.gethostname())}-{slug(device)}"


def ensure_slots(device: str, size: int) -> tuple[str, int]:
    """Create the device's limit with the plan's size on first use; an existing one (perhaps resized
    in the UI) is kept as it is. Returns its name and size."""
    name = slot_name(device)
    with _creating, get_client(sync_client=True) as client:  # one thread at a time; other processes: below
        limit = read_or_create(
            lambda: client.read_global_concurrency_limit_by_name(name),
            lambda: client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=size)),
        )
    return name, limit.limit


# Prefect's temporary server does not run the service that reclaims expired leases, so a run killed
# with -9 would hold its slots there forever (in the SQLite file the next temporary server reuses).
# Runs on a temporary server therefore limit themselves within their own process, all they share.
_local_slots: dict[str, threading.BoundedSemaphore] = {}
WAIT_NOTICE_S = 2.0  # a wait for a server's slot this long is announced
_announced: set[tuple[str, str]] = set()  # (flow run, device) whose waits were announced


def announce_wait(device: str, size: int, logger, limit: str | None = None) -> None:
    """One line per flow run and device, from its first training that has to wait for a slot (a wave
    whose trainings are all cached waits for none, so says nothing)."""
    with _creating:
        if (str(flow_run.id), device) in _announced:
            return
        _announced.add((str(flow_run.id), device))
    at_once = f"{counted(size, 'training')} at a time on {device}"
    if limit is None:
        logger.info("%s: the others wait for a slot", at_once)
    else:
        logger.info("%s, for every run on this machine (the limit %s: `prefect gcl update %s --limit N` resizes "
                    "it): the others wait for a slot", at_once, limit, limit)  # fmt: skip


@contextlib.contextmanager
def device_slot(device: str, size: int, logger) -> Iterator[None]:
    """Hold one of the device's `size` slots while training; say so once when all are taken."""
    local = bool(os.environ.get(TEMPORARY_SERVER_ENV))
    with (_local_slot if local else _prefect_slot)(device, size, logger):
        yield


@contextlib.contextmanager
def _prefect_slot(device: str, size: int, logger) -> Iterator[None]:
    # A lost lease renewal (server hiccup) does not kill a training hours in; a killed run's lease
    # lapses after a minute (the shortest the server takes). The wait is announced once it has lasted
    # WAIT_NOTICE_S: reading the limit's count first races with other runs' trainings starting at the
    # same moment (all read a free slot, then wait), and a timed first attempt would make Prefect log
    # an ERROR for a normal wait.
    name, size = ensure_slots(device, size)
    notice = threading.Timer(WAIT_NOTICE_S, announce_wait, args=(device, size, logger, name))
    notice.daemon = True
    notice.start()
    try:
        with concurrency(name, occupy=1, strict=True, raise_on_lease_renewal_failure=False, lease_duration=60):
            notice.cancel()
            # The lease Prefect just recorded for its task run's clean-up (the only place it shows it): the
            # run's watcher lets it go if this process dies holding it (tasks/reclaimed.py).
            held = ConcurrencyContext.get()
            lease = held.cleanup_lease_ids[-1] if held and held.cleanup_lease_ids else None
            if lease:
                tell_watcher(f"lease {lease}")
            yield
    finally:
        notice.cancel()


@contextlib.contextmanager
def _local_slot(device: str, size: int, logger) -> Iterator[None]:
    with _creating:
        slot = _local_slots.setdefault(device, threading.BoundedSemaphore(size))
    if not slot.acquire(blocking=False):
        announce_wait(device, size, logger)
        slot.acquire()
    try:
        yield
    finally:
        slot.release()
