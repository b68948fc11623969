"""Test isolation: a private PREFECT_HOME and result storage per session, one Prefect harness."""

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

# Must happen before prefect is imported anywhere.
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="dropout-lab-tests-"))
atexit.register(shutil.rmtree, _SESSION_DIR, ignore_errors=True)  # after the harness' server has stopped
os.environ["PREFECT_HOME"] = str(_SESSION_DIR / "prefect-home")
os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(_SESSION_DIR / "prefect-results")
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "90"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW"] = "ignore"
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("DROPOUT_LAB_FAIL_AT_EPOCH", None)
if os.environ.get("PYTEST_XDIST_WORKER"):  # two test processes share the cores: torch in each takes one
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pytest  # noqa: E402

from dropout_lab.core.data import load_split, write_cifar_folder  # noqa: E402


@pytest.fixture(scope="session")
def prefect_harness():
    """One embedded Prefect server (SQLite) for every test that runs flows or tasks."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture(scope="session")
def tiny_cifar(tmp_path_factory) -> Path:
    """A tiny CIFAR-10-format dataset (python layout): 320 train / 160 test images. Read-only by convention."""
    root = tmp_path_factory.mktemp("tiny-cifar")
    write_cifar_folder(root, n_train=320, n_test=160, seed=1)
    return root


@pytest.fixture
def cifar_copy(tiny_cifar, tmp_path) -> Path:
    """A writable data dir holding a copy of the tiny dataset's cifar-10-batches-py/ folder."""
    import shutil

    shutil.copytree(tiny_cifar / "cifar-10-batches-py", tmp_path / "data" / "cifar-10-batches-py")
    return tmp_path / "data"


@pytest.fixture(scope="session")
def splits(tiny_cifar):
    """The tiny dataset decoded: (train images, train labels, test images, test labels). Read-only."""
    root = tiny_cifar / "cifar-10-batches-py"
    return (*load_split(root, train=True), *load_split(root, train=False))
