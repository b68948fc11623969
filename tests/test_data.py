"""Loading CIFAR-format files: good, truncated, wrong shape, bad labels, malicious, unofficial, archives."""

import io
import logging
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from dropout_lab.core import data
from dropout_lab.core.data import (
    DataError,
    ensure_cifar10,
    load_split,
    read_batch,
    safe_extract,
    write_batch,
)
from tests.archives import archive_folder


def test_good_fixture_loads_as_uint8_hwc_with_labels(tiny_cifar):
    root = tiny_cifar / "cifar-10-batches-py"
    x, y = load_split(root, train=True)
    assert x.shape == (320, 32, 32, 3) and x.dtype.is_floating_point is False and str(x.dtype) == "torch.uint8"
    assert y.shape == (320,) and int(y.min()) >= 0 and int(y.max()) <= 9
    # HWC layout: pixel (row 0, col 1) channel 2 is element 2*1024 + 1 of the stored row.
    raw = pickle.load(open(root / "data_batch_1", "rb"), encoding="latin1")["data"]
    assert x[0, 0, 1, 2] == raw[0][2 * 1024 + 1]
    tx, ty = load_split(root, train=False, limit=50)
    assert tx.shape == (50, 32, 32, 3) and ty.shape == (50,)
    assert load_split(root, train=True, limit=70)[0].shape[0] == 70


def test_truncated_file_is_a_clear_error(cifar_copy):
    path = cifar_copy / "cifar-10-batches-py" / "data_batch_1"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match="data_batch_1"):
        read_batch(path)


def test_wrong_image_shape_is_rejected(tmp_path):
    write_batch(tmp_path / "b", np.zeros((4, 3, 16, 16), np.uint8), np.zeros(4, int))
    with pytest.raises(DataError, match="expected 3\\*32\\*32"):
        read_batch(tmp_path / "b")


def test_label_out_of_range_is_rejected(tmp_path):
    write_batch(tmp_path / "b", np.zeros((3, 3, 32, 32), np.uint8), np.array([1, 10, 2]))
    with pytest.raises(DataError, match="label 10 out of range"):
        read_batch(tmp_path / "b")


def test_label_count_mismatch_is_rejected(tmp_path):
    batch = {"data": np.zeros((3, 3072), np.uint8), "labels": [1, 2]}
    (tmp_path / "b").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match="labels do not match"):
        read_batch(tmp_path / "b")


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_never_executes(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": _Exploit(marker), "labels": []}, protocol=2))
    pickle.loads(pickle.dumps(0))  # (the plain unpickler *would* run it: we never use it)
    with pytest.raises(DataError, match="refusing to unpickle"):
        read_batch(path)
    assert not marker.exists()


def test_official_layout_from_python2_style_pickle_loads(tmp_path):
    """The real files are Python 2 pickles with byte-string keys."""
    batch = {b"data": np.full((2, 3072), 7, np.uint8), b"labels": [3, 4], b"batch_label": b"x"}
    (tmp_path / "b").write_bytes(pickle.dumps(batch, protocol=2))
    x, y = read_batch(tmp_path / "b")
    assert x.shape == (2, 32, 32, 3) and list(y) == [3, 4]


def test_checksum_mismatch_loads_with_warning_and_marks_unverified(cifar_copy, caplog):
    with caplog.at_level(logging.WARNING):
        info = ensure_cifar10(cifar_copy, url="http://127.0.0.1:9/unreachable")  # never contacted
    assert info.verified is False and "UNVERIFIED" in info.provenance
    assert "does not match the official checksums" in caplog.text


def test_matching_checksums_mark_verified(cifar_copy, monkeypatch):
    folder = cifar_copy / "cifar-10-batches-py"
    monkeypatch.setattr(data, "OFFICIAL_MD5", {n: data.md5_file(folder / n) for n in data.OFFICIAL_MD5})
    info = ensure_cifar10(cifar_copy)
    assert info.verified and "verified" in info.provenance


def test_existing_archive_is_extracted_without_network(tiny_cifar, tmp_path):
    data_dir = tmp_path / "d"
    data_dir.mkdir()
    archive_folder(tiny_cifar / "cifar-10-batches-py", data_dir / "cifar-10-python.tar.gz")
    info = ensure_cifar10(data_dir, url="http://127.0.0.1:9/unreachable")
    assert (data_dir / "cifar-10-batches-py" / "test_batch").is_file()
    assert not info.verified
    assert [p.name for p in data_dir.iterdir() if p.name.startswith(".extract")] == []


def test_fingerprint_follows_content(cifar_copy, tmp_path, tiny_cifar):
    a = ensure_cifar10(cifar_copy)
    other = tmp_path / "other"
    write_cifar_folder_seed2 = data.write_cifar_folder(other, 320, 160, seed=2)
    assert write_cifar_folder_seed2.is_dir()
    assert data.describe_folder(other / "cifar-10-batches-py").fingerprint != a.fingerprint
    assert data.data_problem(a, cifar_copy, "cifar10") is None
    shutil.rmtree(cifar_copy / "cifar-10-batches-py")
    assert "gone" in data.data_problem(a, cifar_copy, "cifar10")


def _tar_with(members: dict[str, bytes], links: dict[str, str] = ()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        for name, target in dict(links).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buf.getvalue()


@pytest.mark.parametrize(
    "members, links",
    [
        ({"cifar-10-batches-py/../../escaped": b"x"}, {}),
        ({"/tmp/absolute-escape": b"x"}, {}),
        ({}, {"cifar-10-batches-py/link": "/etc/passwd"}),
    ],
    ids=["dotdot", "absolute", "symlink"],
)
def test_archive_traversal_and_links_are_refused(tmp_path, members, links):
    archive = tmp_path / "evil.tar.gz"
    archive.write_bytes(_tar_with(members, links))
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(DataError, match="refusing"):
        safe_extract(archive, dest)
    assert not (tmp_path / "escaped").exists()
    assert list(dest.iterdir()) == []


def test_crafted_archive_leaves_data_dir_clean(tmp_path):
    data_dir = tmp_path / "d"
    data_dir.mkdir()
    (data_dir / "cifar-10-python.tar.gz").write_bytes(_tar_with({"cifar-10-batches-py/../../x": b"1"}))
    with pytest.raises(DataError):
        ensure_cifar10(data_dir)
    assert sorted(p.name for p in data_dir.iterdir()) == [".cifar10.lock", "cifar-10-python.tar.gz"]


def test_incomplete_folder_is_a_clear_error(cifar_copy):
    (cifar_copy / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match="incomplete.*data_batch_3"):
        ensure_cifar10(cifar_copy)


def test_unwritable_data_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(DataError, match="not writable"):
        ensure_cifar10(blocker / "data")


def test_official_constants_agree_with_torchvision():
    from torchvision.datasets import CIFAR10

    assert (data.CIFAR10_URL, data.ARCHIVE_NAME, data.ARCHIVE_MD5, data.FOLDER_NAME) == (
        CIFAR10.url, CIFAR10.filename, CIFAR10.tgz_md5, CIFAR10.base_folder
    )  # fmt: skip
    assert data.TRAIN_FILES == [name for name, _ in CIFAR10.train_list] and data.TEST_FILE == CIFAR10.test_list[0][0]
    official = dict(CIFAR10.train_list + CIFAR10.test_list + [[CIFAR10.meta["filename"], CIFAR10.meta["md5"]]])
    assert data.OFFICIAL_MD5 == official and data.META_FILE == CIFAR10.meta["filename"]


def test_training_code_does_not_import_torchvision():
    """torchvision costs every training process ~160 MB; only a download needs it."""
    code = (
        "import sys, dropout_lab.runtime.training, dropout_lab.core.data, dropout_lab.core.train, "
        "dropout_lab.core.stacked; sys.exit('torchvision' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0
