"""The command line: validation before any work, help, and one real run as a user types it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dropout_lab.cli.compare import build_parser
from dropout_lab.naming import run_folder_name
from flows.compare import main
from tests.refusals import one_line_refusal

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--epochs", "0"], "--epochs: must be >= 1 (got 0)"),
        (["--batch-size", "0"], "--batch-size: must be >= 1"),
        (["--dropout", "1.5"], "--dropout: must be < 1"),
        (["--lr", "-1"], "--lr: must be > 0"),
        (["--device", "cuda:7"], "cuda"),
        (["--device", "tpu"], "unknown device"),
        (["--precision", "bf16", "--device", "cpu"], "needs a CUDA device"),
        (["--dataset", "imagenet"], "--dataset: must be one of 'cifar10' or 'fake'"),
        (["--limit-train", "-5"], "--limit-train"),
        (["--stack", "sometimes"], "--stack: must be one of 'auto', 'on' or 'off'"),
        (["--cuda-graphs", "always"], "--cuda-graphs: must be one of 'auto', 'on' or 'off'"),
        (["--train-eval-images", "-1"], "--train-eval-images: must be >= 0"),
        (
            ["--seeds", "auto", "--max-seeds", "4"],
            "--max-seeds: must be >= 5 (got 4): seeds come in waves of 5, each wave a look: at least one wave",
        ),
    ],
)
def test_bad_parameters_give_one_line_and_exit_2(argv, message, capsys, tmp_path):
    assert message in one_line_refusal(capsys, 2, main, *argv, "--data-dir", str(tmp_path / "d"))
    assert not (tmp_path / "d").exists()  # nothing was started


def test_help_lists_every_flow_parameter(capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--data-dir", "--out", "--epochs", "--batch-size", "--lr", "--dropout", "--seed", "--device",
                 "--limit-train", "--limit-test", "--refresh", "--dataset", "--precision", "--cache-dir"):  # fmt: skip
        assert flag in out


def test_script_runs_end_to_end_and_ends_with_the_report_line(tmp_path):
    """Run from another folder with relative paths: they mean that folder, for the training processes too."""
    env = dict(os.environ)  # the tests' PREFECT_HOME: its database is created once, by the first such run
    proc = subprocess.run(
        [sys.executable, str(REPO / "flows" / "compare.py"), "--dataset", "fake", "--epochs", "1",
         "--limit-train", "200", "--limit-test", "100", "--data-dir", "data", "--out", "out", "--cache-dir", "cache"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:]
    last = proc.stdout.strip().splitlines()[-1]  # stdout and the logs (stderr) together, as in a terminal
    assert last.startswith("report: "), proc.stdout[-2000:]
    folder = Path(last.removeprefix("report: "))
    assert folder.parent == tmp_path / "out" and (folder / "comparison.png").is_file()
    assert len(list((tmp_path / "cache" / "checkpoints").glob("*/epoch-0001.pt"))) == 2
    # Both training processes started in a fraction of a second: forked from a server that has torch.
    assert proc.stdout.count("; started in data") == 2, proc.stdout[-3000:]
    # The temporary server has no UI: no link to one (Prefect's "View at"), a line saying how to get one.
    assert "View at" not in proc.stdout and "http://127.0.0.1:8" not in proc.stdout, proc.stdout[:3000]
    assert proc.stdout.count("without a UI; to watch runs in the UI start one (`prefect server start`)") == 1


def servers_of(prefect_home: Path) -> list[int]:
    """Live processes started with this PREFECT_HOME (a temporary server inherits it)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if f"PREFECT_HOME={prefect_home}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_refused_parameters_print_one_line_and_end_the_server_begun_early(tmp_path):
    """The script spawns Prefect's temporary server before it imports torch and checks parameters;
    a refused run prints its error line alone and ends that server at once (or a caller reading
    the output would wait for the server's start to finish)."""
    home = tmp_path / "prefect-home"
    proc = subprocess.run(
        [sys.executable, str(REPO / "flows" / "compare.py"), "--dropout", "1.5", "--data-dir", str(tmp_path / "d")],
        env={**os.environ, "PREFECT_HOME": str(home)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr == "error: --dropout: must be < 1.0 (got 1.5)\n"
    assert not servers_of(home) and not (tmp_path / "d").exists()


@pytest.mark.parametrize("flag", ["--help", "-h", "--he"])
def test_help_begins_no_server(tmp_path, flag):
    """Usage only: no server is spawned, so none starts creating Prefect's database (a server begun
    early creates its database file while the command line is still importing torch)."""
    home = tmp_path / "prefect-home"
    script = [sys.executable, str(REPO / "flows" / "compare.py"), "--epochs", "1", flag]
    env = {**os.environ, "PREFECT_HOME": str(home)}
    proc = subprocess.run(script, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: python flows/compare.py") and proc.stderr == ""
    assert not (home / "prefect.db").exists()


def test_the_server_begun_first_is_the_one_the_run_uses(tmp_path):
    """The temporary server is spawned before torch and Prefect's engine are imported, in its own
    session (a terminal's Ctrl-C does not reach it), and Prefect's client then talks to it: Prefect
    starts no server of its own."""
    code = (
        "import os, sys\n"
        "from dropout_lab.runtime import temporary_server\n"
        "temporary_server.begin()\n"
        "heavy = {'torch', 'scipy', 'matplotlib', 'prefect.server.api.server'} & set(sys.modules)  # begun before\n"
        "early = temporary_server._server and temporary_server._server[1]\n"
        "from prefect.client.orchestration import get_client\n"
        "with temporary_server.serving(90) as url, get_client(sync_client=True) as client:\n"
        "    answered = client.api_healthcheck() is None and str(client.api_url).rstrip('/') == url\n"
        "from prefect.server.api.server import SubprocessASGIServer\n"
        "own = early is not None and temporary_server._server[1] is early and os.getsid(early.pid) != os.getsid(0)\n"
        "print(sorted(heavy), own, answered, not SubprocessASGIServer._instances, url)\n"
    )
    env = dict(os.environ)
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert run.stdout.startswith("[] True True True http://127.0.0.1:"), run.stdout + run.stderr[-2000:]
    # With a server configured there is nothing to begin.
    begun = code.split("from prefect.client")[0] + "print(early)\n"
    configured = subprocess.run([sys.executable, "-c", begun], cwd=REPO, capture_output=True, text=True, timeout=60,
                                env={**env, "PREFECT_API_URL": "http://127.0.0.1:9/api"})  # fmt: skip
    assert configured.stdout.strip() == "None", configured.stdout + configured.stderr[-2000:]


def test_offline_without_a_copy_fails_with_one_clear_line(tmp_path):
    env = dict(os.environ)
    code = (
        "import sys, flows.compare as c, tasks.fetch as s;"
        "s.fetch_cifar10.retry_delay_seconds = [0, 0, 0];"
        "sys.exit(c.main(sys.argv[1:]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "--data-dir", str(tmp_path / "data"), "--epochs", "1"],
        cwd=REPO, env={**env, "DROPOUT_LAB_CIFAR10_URL": "http://127.0.0.1:9/cifar-10-python.tar.gz"},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout  # Prefect's task-failure tracebacks: in the run's log only
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: DownloadError: could not download CIFAR-10 from http://127.0.0.1:9/")
    assert str((tmp_path / "data" / "cifar-10-python.tar.gz").resolve()) in last


@pytest.mark.parametrize(
    "argv, message",
    [(["--cron", "not a cron"], "--cron/--timezone"), (["--timezone", "Mars/Olympus"], "--cron/--timezone"),
     (["--dropout", "1.5"], "--dropout: must be < 1")],
)  # fmt: skip
def test_serve_refuses_bad_schedule_or_parameters_before_registering(argv, message, capsys, tmp_path):
    from deployments.serve import main as serve_main

    assert serve_main([*argv, "--data-dir", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert "DROPOUT_LAB_DATA_ROOT" not in os.environ  # a refused start leaves no roots behind


def test_serve_turns_flow_flags_into_deployment_parameters():
    import inspect

    from deployments.serve import parse
    from flows.compare import compare

    options, params = parse(["--cron", "*/5 * * * *", "--epochs", "3", "--dropout", "0.1", "0.5"])
    assert options.cron == "*/5 * * * *" and options.name == "nightly"
    assert set(params) == set(inspect.signature(compare.fn).parameters)  # exactly the flow's parameters
    assert params["epochs"] == 3 and params["dropout"] == [0.1, 0.5]


def test_report_folder_names_say_when_only_part_of_the_data_was_used():
    from dropout_lab.config import Design, TrainConfig

    full = [TrainConfig(dropout=0.25), TrainConfig(dropout=0.0)]
    small = [TrainConfig(dropout=0.25, limit_train=2000, limit_test=500), TrainConfig(dropout=0.0, limit_train=2000,
             limit_test=500)]  # fmt: skip
    assert run_folder_name(full, "cifar10", "f", Design()).startswith("cifar10-p0.25-s0-e8-")
    assert run_folder_name(small, "cifar10", "f", Design()).startswith("cifar10-train2000-test500-p0.25-s0-e8-")
