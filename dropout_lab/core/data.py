"""CIFAR-10 on disk: download, verify, safely unpickle, and decode once to uint8 tensors.

The "python version" of CIFAR-10 is a set of pickles. Unpickling runs code named inside the file,
so we never call `pickle.load` on it: `SafeUnpickler` only admits the few numpy/builtin
constructors a genuine batch needs and rejects anything else.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pickle
import shutil
import socket
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dropout_lab.config import DATASET_IMAGES
from dropout_lab.locks import held, remove_dead_leftovers
from dropout_lab.redact import redact, split_credentials
from dropout_lab.regular import NotRegular, regular_file

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# The official archive, as torchvision's CIFAR10 describes it (tests/test_data.py checks they agree).
# Written out rather than read from torchvision: importing torchvision costs each training process
# memory it never uses (benchmarks/RESULTS.md). (The download is ours too: torchvision's has no timeouts.)
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
FOLDER_NAME = "cifar-10-batches-py"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
OFFICIAL_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}
IMAGE_BYTES = 3 * 32 * 32


class DataError(ValueError):
    """The data on disk is unusable (wrong layout, truncated, malicious, ...). Not retried."""


class DownloadError(OSError):
    """Fetching the archive failed: retried when a retry may fix it (a timeout, a reset, a truncated
    transfer), not when the host's name does not resolve (offline: `retry` False)."""

    def __init__(self, message: str, retry: bool = True):
        super().__init__(message)
        self.retry = retry


@dataclass(frozen=True)
class DataInfo:
    """Where a ready-to-load dataset lives and how far we trust it. Small: passed between tasks."""

    root: str  # folder holding data_batch_1..5, test_batch, batches.meta
    dataset: str  # "cifar10" or "fake"
    verified: bool  # every file's measured md5 is the official one
    provenance: str  # one human line for report titles
    fingerprint: str  # sha256 over the files' measured md5s: part of every downstream cache key and checkpoint


# --- safe unpickling ---------------------------------------------------------------------------

# (module, name) pairs a genuine CIFAR-10 batch pickle references: numpy's array reconstruction
# (its module moved in numpy 2) and `_codecs.encode`, which protocol 2 uses for bytes objects.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise DataError(f"refusing to unpickle {module}.{name}: not part of a CIFAR-10 batch file")


@contextlib.contextmanager
def data_file(path: Path, **limits) -> Iterator:
    """A regular file of the data folder, opened through links (a FIFO would block, a device never end);
    anything else is a DataError, one line."""
    try:
        with regular_file(path, follow=True, **limits) as f:
            yield f
    except NotRegular as e:
        raise DataError(str(e)) from None


def safe_unpickle(path: Path) -> dict:
    with data_file(path) as f:
        try:
            obj = SafeUnpickler(f, encoding="latin1").load()
        except DataError as e:
            raise DataError(f"{path}: {e}") from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
            raise DataError(f"{path}: not a readable CIFAR-10 batch ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict, found {type(obj).__name__}")
    # Python 2 pickles may carry byte-string keys.
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def read_batch(path: Path, as_stored: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One batch file → images (N, 32, 32, 3) uint8 HWC and labels (N,) int64, fully validated.

    `as_stored`: images as the file stores them, (N, 3·32·32) channel-major, without the copy."""
    batch = safe_unpickle(path)
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise DataError(f"{path}: 'data' must be a 2-D uint8 array")
    if data.shape[1] != IMAGE_BYTES:
        raise DataError(f"{path}: images have {data.shape[1]} values, expected 3*32*32 = {IMAGE_BYTES}")
    if not isinstance(labels, (list, np.ndarray)) or len(labels) != len(data):
        raise DataError(f"{path}: {len(data)} images but labels do not match in number")
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise DataError(f"{path}: labels must be integers")
    labels = labels.astype(np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        bad = labels[(labels < 0) | (labels >= len(CLASSES))][0]
        raise DataError(f"{path}: label {bad} out of range 0..{len(CLASSES) - 1}")
    return (data if as_stored else np.ascontiguousarray(to_hwc(data))), labels


def to_hwc(data: np.ndarray) -> np.ndarray:
    """(N, 3·32·32) channel-major, as stored → (N, 32, 32, 3) view: HWC, so an NCHW view of it is channels_last."""
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def read_class_names(root: Path) -> list[str]:
    meta = safe_unpickle(Path(root) / META_FILE)
    names = meta.get("label_names")
    if not isinstance(names, list) or len(names) != len(CLASSES):
        raise DataError(f"{root / META_FILE}: expected {len(CLASSES)} label names")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def load_split(root: str | Path, train: bool, limit: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode a split once: images (N, 32, 32, 3) uint8, labels (N,) int64; first `limit` if > 0.

    Memory: the batches are kept as stored and copied one by one into the (untouched, so not yet
    resident) output, each freed once copied: the peak stays near one copy of the split instead
    of two."""
    import torch  # here: the command line's checks import this module, and torch takes seconds

    files = TRAIN_FILES if train else [TEST_FILE]
    stored, labels, have = [], [], 0
    for name in files:
        x, y = read_batch(Path(root) / name, as_stored=True)
        stored.append(x)
        labels.append(y)
        have += len(y)
        if limit and have >= limit:
            break  # no need to decode the remaining batch files
    n = min(have, limit) if limit else have
    if n == 0:
        raise DataError(f"{root}: the {'training' if train else 'test'} split is empty")
    images = torch.empty((n, 32, 32, 3), dtype=torch.uint8)
    start = 0
    for i in range(len(stored)):
        chunk, stored[i] = stored[i][: n - start], None
        images[start : start + len(chunk)] = torch.from_numpy(to_hwc(chunk))
        start += len(chunk)
    return images, torch.from_numpy(np.concatenate(labels)[:n])


# --- checking, downloading and extracting --------------------------------------------------------


def sample_images(root: str | Path, n: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """The first `n` training images (n, 32, 32, 3) uint8 and their labels, for the report's grid."""
    images, labels = read_batch(Path(root) / TRAIN_FILES[0])
    return images[:n], labels[:n]


def md5_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with data_file(path) as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# A file's md5, memoised within the process on the file's identity: any write changes its size, mtime or
# ctime (ctime cannot be set back by hand), a replaced file has another inode. Measuring CIFAR-10's
# seven files takes about half a second (benchmarks/RESULTS.md, *Integrity*); the memo spares a run
# measuring twice (the fetch's check, then the fetch), never a new process.
_md5_memo: dict[str, tuple[tuple, str]] = {}


def measured_md5(path: Path) -> str:
    """md5 of `path` as it is now (memoised on its size, mtime, ctime, inode and device)."""
    st = os.stat(path)
    identity = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)
    key = str(Path(path).resolve())
    found = _md5_memo.get(key)
    if found is None or found[0] != identity:
        found = (identity, md5_file(path))
        _md5_memo[key] = found
    return found[1]


def measured_digests(folder: Path) -> tuple[dict[str, str], str]:
    """(md5 of each CIFAR-10 file, the data's fingerprint: sha256 over those md5s) as the files are now."""
    digests = {name: measured_md5(Path(folder) / name) for name in sorted(OFFICIAL_MD5)}
    return digests, hashlib.sha256(repr(sorted(digests.items())).encode()).hexdigest()


def _missing_files(folder: Path) -> list[str]:
    return [name for name in OFFICIAL_MD5 if not (folder / name).is_file()]


def describe_folder(folder: Path, dataset: str = "cifar10", warn: bool = True) -> DataInfo:
    """Measure a complete batches folder (every file's md5) and say how far it can be trusted: verified
    means every file's measured md5 is the official one, never what a record says."""
    digests, fingerprint = measured_digests(folder)
    root = str(Path(folder).resolve())
    if dataset == "fake":
        return DataInfo(root, "fake", False, "synthetic data — accuracies meaningless", fingerprint)
    mismatched = [n for n, d in digests.items() if d != OFFICIAL_MD5[n]]
    if not mismatched:
        return DataInfo(root, dataset, True, "CIFAR-10 (official files, md5 verified)", fingerprint)
    if warn:
        log.warning("CIFAR-10 copy at %s does not match the official checksums (%s); loading it anyway, and the "
                    "report marks it unverified", folder, ", ".join(mismatched))  # fmt: skip
    return DataInfo(root, dataset, False, "CIFAR-10 local copy — UNVERIFIED (md5 mismatch)", fingerprint)


def _is_within(base: Path, target: Path) -> bool:
    return os.path.commonpath([base.resolve(), target.resolve()]) == str(base.resolve())


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a tar.gz refusing absolute paths, `..` members, links and device files."""
    try:
        with data_file(archive, most=1 << 30) as f, tarfile.open(fileobj=f, mode="r:*") as tar:
            for member in tar.getmembers():
                if member.issym() or member.islnk():
                    raise DataError(f"{archive}: refusing link member {member.name!r}")
                if not (member.isfile() or member.isdir()):
                    raise DataError(f"{archive}: refusing special member {member.name!r}")
                if Path(member.name).is_absolute() or not _is_within(dest, dest / member.name):
                    raise DataError(f"{archive}: refusing member outside the data folder: {member.name!r}")
            # The 'data' filter re-checks all of the above inside tarfile itself.
            tar.extractall(dest, filter="data")
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"{archive}: cannot extract ({type(e).__name__}: {e})") from None


def _install_from_archive(archive: Path, data_dir: Path) -> Path:
    """Extract into a temp folder next to the target, then rename: never a half-extracted folder."""
    final = data_dir / FOLDER_NAME
    with tempfile.TemporaryDirectory(dir=data_dir, prefix=f".extract-{os.getpid()}-") as tmp:
        safe_extract(archive, Path(tmp))
        extracted = Path(tmp) / FOLDER_NAME
        if not extracted.is_dir() or _missing_files(extracted):
            raise DataError(
                f"{archive}: not a CIFAR-10 python archive (expected {FOLDER_NAME}/ with {', '.join(OFFICIAL_MD5)})"
            )
        os.replace(extracted, final)
    return final


# Network limits per download attempt: each connect or read may stall this long (a mirror that
# accepts and never answers fails in NET_TIMEOUT_S, and the task retries), and the whole transfer
# may take this long (a mirror trickling bytes cannot hold the data lock for hours).
NET_TIMEOUT_S = 30.0
DOWNLOAD_BUDGET_S = 30 * 60.0
CHUNK = 1 << 20


def fetch_url(url: str, dest: Path) -> str:
    """Stream `url` into `dest`; returns its md5. Network failures raise DownloadError (retryable);
    failures writing `dest` (disk full, read-only) raise OSError (not retried)."""
    timeout_s, budget_s, start = NET_TIMEOUT_S, DOWNLOAD_BUDGET_S, time.monotonic()
    md5 = hashlib.md5()
    plain, auth = split_credentials(url)  # user:password@ in the URL: sent as HTTP basic auth
    headers = {"User-Agent": "dropout-lab", **({"Authorization": auth} if auth else {})}
    try:
        response = urllib.request.urlopen(urllib.request.Request(plain, headers=headers), timeout=timeout_s)
    except (urllib.error.URLError, HTTPException, OSError, ValueError) as e:
        unresolved = isinstance(getattr(e, "reason", e), socket.gaierror)  # offline: no retry will resolve it
        raise DownloadError(f"could not download CIFAR-10 from {redact(url)} ({_reason(e)})", not unresolved) from None
    with response, open(dest, "wb") as f:
        while True:
            if time.monotonic() - start > budget_s:
                raise DownloadError(f"download from {redact(url)} took over {budget_s:.0f} s; gave up this attempt")
            try:
                block = response.read1(CHUNK)  # what has arrived: read() waits for a whole CHUNK, past the budget
            except (HTTPException, OSError) as e:  # socket timeouts and resets
                raise DownloadError(f"download from {redact(url)} broke off ({_reason(e)})") from None
            if not block:
                break
            md5.update(block)
            f.write(block)
    return md5.hexdigest()


def _reason(error: BaseException) -> str:
    if isinstance(error, TimeoutError) or "timed out" in str(error):
        return f"no answer within {NET_TIMEOUT_S:.0f} s"
    return redact(f"{type(error).__name__}: {error}")


def download_archive(url: str, data_dir: Path) -> Path:
    """Download to a temp name, verify the md5, then rename into place. Raises DownloadError."""
    target = data_dir / ARCHIVE_NAME
    with tempfile.TemporaryDirectory(dir=data_dir, prefix=f".download-{os.getpid()}-") as tmp:
        try:
            digest = fetch_url(url, Path(tmp) / ARCHIVE_NAME)
        except DownloadError as e:
            raise DownloadError(
                f"{e}. Offline? Put {ARCHIVE_NAME} at {target.resolve()} or the extracted {FOLDER_NAME}/ "
                f"folder at {(data_dir / FOLDER_NAME).resolve()}",
                e.retry,
            ) from None
        if digest != ARCHIVE_MD5:
            raise DownloadError(f"download from {redact(url)} failed its md5 check (got {digest}); will retry")
        os.replace(Path(tmp) / ARCHIVE_NAME, target)
    return target


def ensure_cifar10(data_dir: str | Path, url: str = CIFAR10_URL) -> DataInfo:
    """Make `data_dir/cifar-10-batches-py` exist and describe it, touching the network only if needed.

    Order: an existing extracted folder, else an existing archive, else download. A file lock makes
    concurrent callers sharing `data_dir` download and extract once.
    """
    data_dir = Path(data_dir)
    lock_path = data_dir / ".cifar10.lock"
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        lock_path.touch(exist_ok=True)
    except OSError as e:
        raise DataError(f"data folder {data_dir} is not writable ({e.strerror or e})") from None
    with held(lock_path, "the data folder"):
        # Holding the lock, no live run is downloading or extracting here: these are a crash's.
        remove_dead_leftovers(data_dir, ".extract-*")
        remove_dead_leftovers(data_dir, ".download-*")
        folder = data_dir / FOLDER_NAME
        if folder.is_dir() and not _missing_files(folder):
            return describe_folder(folder)
        if folder.is_dir():
            if odd := [n for n in _missing_files(folder) if (folder / n).exists() or (folder / n).is_symlink()]:
                raise DataError(f"{folder / odd[0]}: not a regular file (a link, a FIFO or a device: CIFAR-10's "
                                "batches are files; move it aside)")  # fmt: skip
            raise DataError(
                f"{folder} is incomplete (missing {', '.join(_missing_files(folder))}); delete it to re-extract"
            )
        archive = data_dir / ARCHIVE_NAME
        if not archive.is_file():
            archive = download_archive(url, data_dir)
        elif md5_file(archive) != ARCHIVE_MD5:
            log.warning("%s does not match the official md5; using it as an unverified local copy", archive)
        return describe_folder(_install_from_archive(archive, data_dir))


def data_problem(info: DataInfo, data_dir: str | Path, dataset: str) -> str | None:
    """Why a DataInfo read back from the cache cannot stand for `dataset` in `data_dir` (None: it can):
    it must name this folder's dataset, and every word of it must be what the files measure now (their
    checksums: whether they are the official ones, and the fingerprint), not what the record says."""
    expected = (Path(data_dir) / (FAKE_FOLDER if dataset == "fake" else "") / FOLDER_NAME).resolve()
    if not isinstance(info, DataInfo) or info.dataset != dataset:
        return f"it does not describe the {dataset} data"
    if Path(info.root).resolve() != expected:
        return f"its data folder {info.root} is not {expected}"
    if not expected.is_dir() or _missing_files(expected):
        return "its files are gone"
    measured = describe_folder(expected, dataset, warn=False)
    for name in ("verified", "provenance", "fingerprint"):
        if getattr(info, name) != getattr(measured, name):
            return f"it says {name} {getattr(info, name)!r:.60}, the files measure {getattr(measured, name)!r:.60}"
    return None


# --- CIFAR-format fixtures and the synthetic dataset ---------------------------------------------

FAKE_FOLDER = "fake-cifar10"


def write_batch(path: Path, images_chw: np.ndarray, labels: np.ndarray) -> None:
    """Write one batch exactly as the official files are laid out (pickle protocol 2)."""
    batch = {
        "batch_label": path.name,
        "labels": [int(v) for v in labels],
        "data": np.ascontiguousarray(images_chw.reshape(len(labels), -1), dtype=np.uint8),
        "filenames": [f"{i:05d}.png" for i in range(len(labels))],
    }
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)


def write_cifar_folder(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Generate a learnable CIFAR-format dataset: each class is a noisy coloured pattern.

    Returns the `cifar-10-batches-py` folder. Used by the tests and by `--dataset fake`.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32]
    # (10, 3, 32, 32): per class a colour and a stripe frequency/orientation.
    protos = np.stack(
        [
            np.stack([np.sin((xx * np.cos(c) + yy * np.sin(c)) * (0.2 + 0.05 * c) + ch) for ch in range(3)]) * 25 + 128
            for c in range(len(CLASSES))
        ]
    )

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, len(CLASSES), size=n)
        noise = rng.normal(0, 110, size=(n, 3, 32, 32))
        return np.clip(protos[labels] + noise, 0, 255).astype(np.uint8), labels

    folder = Path(root) / FOLDER_NAME
    folder.mkdir(parents=True, exist_ok=True)
    train_x, train_y = make(n_train)
    for i, (xs, ys) in enumerate(zip(np.array_split(train_x, 5), np.array_split(train_y, 5), strict=True), start=1):
        write_batch(folder / f"data_batch_{i}", xs, ys)
    write_batch(folder / TEST_FILE, *make(n_test))
    with open(folder / META_FILE, "wb") as f:
        pickle.dump({"num_cases_per_batch": n_train // 5, "label_names": list(CLASSES), "num_vis": 3072}, f, 2)
    return folder


def ensure_fake(data_dir: str | Path, n_train: int = DATASET_IMAGES["fake"][0], n_test: int = DATASET_IMAGES["fake"][1]
                ) -> DataInfo:  # fmt: skip
    """The offline `--dataset fake` path: generate once under data_dir/fake-cifar10/."""
    root = Path(data_dir) / FAKE_FOLDER
    folder = root / FOLDER_NAME
    root.mkdir(parents=True, exist_ok=True)
    with held(root / ".lock", "the synthetic data folder"):
        if not folder.is_dir() or _missing_files(folder):
            with tempfile.TemporaryDirectory(dir=root, prefix=f".gen-{os.getpid()}-") as tmp:
                made = write_cifar_folder(Path(tmp), n_train, n_test)
                shutil.rmtree(folder, ignore_errors=True)
                os.replace(made, folder)
        return describe_folder(folder, dataset="fake")
