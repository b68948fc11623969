"""Only regular files are opened, never through a link (#42): a FIFO, a link to /dev/zero or to a file
elsewhere, a folder, planted where the project reads or writes its cache, checkpoints, records, locks and
the trust store, is set aside or refused in one line; nothing blocks, nothing is written through. The
data folder may hold links (a shared copy), but what they lead to must be a file."""

import faulthandler
import os
from pathlib import Path

import pytest

from dropout_lab.core.checkpoint import CheckpointError, load_checkpoint
from dropout_lab.core.data import DataError, ensure_cifar10, md5_file, read_batch
from dropout_lab.locks import held
from dropout_lab.regular import NotRegular, create_new, read_regular
from flows.compare import compare, main
from tests.refusals import one_line_refusal

FAKE = dict(dataset="fake", epochs=1, limit_train=200, limit_test=100)


@pytest.fixture(autouse=True)
def never_hang():
    """A FIFO that is opened blocks for ever: fail the test (with tracebacks) instead of hanging CI."""
    faulthandler.dump_traceback_later(240, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def test_read_regular_refuses_fifos_links_folders_and_oversized_files(tmp_path):
    regular = tmp_path / "file"
    regular.write_bytes(b"12345")
    assert read_regular(regular) == b"12345"
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "zero").symlink_to("/dev/zero")
    (tmp_path / "link").symlink_to(regular)
    (tmp_path / "folder").mkdir()
    for name, says in (("fifo", "a FIFO"), ("zero", "a link"), ("link", "a link"), ("folder", "a folder")):
        with pytest.raises(NotRegular, match=says):
            read_regular(tmp_path / name)
    with pytest.raises(NotRegular, match="more than"):
        read_regular(regular, most=4)
    with pytest.raises(CheckpointError, match="FIFO"):  # a checkpoint that is not a file is no checkpoint
        load_checkpoint(tmp_path / "fifo")


def test_a_link_planted_as_a_lock_s_pid_file_is_replaced_not_written_through(tmp_path):
    precious = tmp_path / "precious"
    precious.write_text("keep me")
    lock = tmp_path / ".lock"
    Path(f"{lock}.pid").symlink_to(precious)
    with held(lock, "a test lock"):
        assert read_regular(f"{lock}.pid") == str(os.getpid()).encode()
    assert precious.read_text() == "keep me" and not Path(f"{lock}.pid").exists()
    create_new(tmp_path / "new", b"x")  # and a leftover file is replaced the same way
    assert read_regular(tmp_path / "new") == b"x"


def test_fifos_and_links_planted_in_the_cache_are_set_aside_and_the_run_completes(prefect_harness, tmp_path):
    params = dict(**FAKE, data_dir=str(tmp_path / "data"), out=str(tmp_path / "out"), cache_dir=str(tmp_path / "c"))
    assert compare(**params, return_state=True).is_completed()
    results = tmp_path / "c" / "results"
    records = [f for f in results.iterdir() if f.is_file()]
    for record in records:  # every cached record a FIFO: a plain open would wait for a writer for ever
        record.unlink()
        os.mkfifo(record)
    checkpoints = sorted((tmp_path / "c" / "checkpoints").glob("*/epoch-0001.pt"))
    assert len(checkpoints) == 2
    checkpoints[0].unlink()
    os.mkfifo(checkpoints[0])  # a FIFO named as the epoch's checkpoint
    checkpoints[1].unlink()
    checkpoints[1].symlink_to("/dev/zero")  # read until memory runs out, were the link followed
    again = compare(**params, return_state=True)
    assert again.is_completed()
    # Every record was looked up again and set aside (the data's and the trainings': the report has none).
    assert len(list(results.glob("*.unreadable"))) == len(records) == 3
    for checkpoint in checkpoints:  # set aside, and the epoch trained again into a regular file
        assert read_regular(checkpoint)[:4] == load_checkpoint.__globals__["MAGIC"][:4]
        assert list(checkpoint.parent.glob("epoch-0001.pt.*")), "not set aside"


def test_a_trust_store_that_is_not_a_file_is_refused_in_one_line_before_anything_exists(capsys, tmp_path, monkeypatch):
    store = tmp_path / "measured.txt"
    store.mkdir()  # the audit's case: a folder where the list of measured checkpoints belongs
    monkeypatch.setenv("DROPOUT_LAB_MEASURED", str(store))
    where = ["--data-dir", str(tmp_path / "d"), "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c")]
    line = one_line_refusal(capsys, 2, main, "--dataset", "fake", *where)
    assert "store of measured checkpoints" in line and "a folder" in line and "DROPOUT_LAB_MEASURED" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["measured.txt"]


def test_the_data_folder_follows_links_to_files_and_refuses_fifos_and_devices_in_one_line(tiny_cifar, tmp_path):
    shared = tiny_cifar / "cifar-10-batches-py"
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for f in shared.iterdir():  # a shared copy, linked file by file
        (folder / f.name).symlink_to(f)
    assert ensure_cifar10(tmp_path / "data").root == str(folder)
    for planted in ("fifo", "/dev/zero"):
        (folder / "data_batch_1").unlink()
        if planted == "fifo":
            os.mkfifo(folder / "data_batch_1")
        else:
            (folder / "data_batch_1").symlink_to(planted)
        with pytest.raises(DataError, match="data_batch_1: not a regular file") as refused:
            ensure_cifar10(tmp_path / "data")
        assert "\n" not in str(refused.value)
        for read in (read_batch, md5_file):  # planted after the folder was checked: the read itself refuses
            with pytest.raises(DataError, match="data_batch_1: not a regular file"):
                read(folder / "data_batch_1")
