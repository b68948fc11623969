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
# The checkpoints this session's runs measured (dropout_lab/core/verify.py): not the user's own list.
os.environ["DROPOUT_LAB_MEASURED"] = str(_SESSION_DIR / "measured.txt")
# One run history per test process: setting up a new MLflow store takes seconds, and most runs' histories
# are not looked at (a test that looks names its store, or removes this to get the default under --out).
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_SESSION_DIR / 'mlflow.db'}"
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


@pytest.fixture(scope="session", autouse=True)
def _slots_in_process():
    """In-process trainings take their device slot in their own process, as the command line's do on its
    temporary server (tasks/slots.py). On a SQLite Prefect server, a slot asked for as its task starts meets
    the task-run recorder's write of that start: the server answers 503 and Prefect's client retries after a
    fixed 2 s, about 200 s of this suite's waits (benchmarks/RESULTS.md). Tests of Prefect's own limit take
    the `prefect_slots` fixture; command-line runs against a server (e2e) always take it."""
    from tasks import slots

    real, slots._prefect_slot = slots._prefect_slot, slots._local_slot
    yield real
    slots._prefect_slot = real


@pytest.fixture
def prefect_slots(_slots_in_process, monkeypatch):
    """This test's in-process trainings take Prefect's global concurrency limit, as served runs do."""
    monkeypatch.setattr("tasks.slots._prefect_slot", _slots_in_process)


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


@pytest.fixture(scope="session")
def empty_mlflow_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its tables and nothing in them, made once per test process."""
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-empty") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def new_store(empty_mlflow_store):
    """`new_store(path)`: a new, empty MLflow store at `path` (a copy of `empty_mlflow_store`); its URI. For
    tests about what a store holds, not how one is made: MLflow makes a store's tables in about 2 s."""
    import shutil

    def make(path: Path) -> str:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(empty_mlflow_store, path)
        return f"sqlite:///{path}"

    return make


def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server on a free loopback port for the session: the SQLAlchemy URL of its
    database `history`. Skipped, with the reason, where PostgreSQL or its Python driver is not
    installed (.ci/run installs both)."""
    import socket
    import subprocess
    import time

    psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (pip install -e '.[dev]')")
    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="dropout-lab-postgres-"))  # not under pytest's root-only folders
    as_user = []
    if os.geteuid() == 0:  # the server refuses to run as root: the system's postgres user runs it
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL")
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data = root / "data"
    subprocess.run([*as_user, bin_dir / "initdb", "-D", data, "-A", "trust", "-U", "lab"], check=True,
                   capture_output=True)  # fmt: skip
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [*as_user, bin_dir / "postgres", "-D", data, "-p", str(port), "-h", "127.0.0.1", "-k", root]
    server = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(150):
            try:
                with psycopg.connect(f"host=127.0.0.1 port={port} user=lab dbname=postgres", autocommit=True) as db:
                    db.execute("CREATE DATABASE history")
                break
            except psycopg.OperationalError:
                time.sleep(0.2)
        else:
            pytest.fail("PostgreSQL did not start within 30 s")
        yield f"postgresql://lab@127.0.0.1:{port}/history"
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)
