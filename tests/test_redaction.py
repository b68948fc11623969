"""Credentials never reach output: one redaction (dropout_lab/redact.py) for every form a URL or an address
carries a secret in, applied to our messages and to every log record of every process, so that refusals,
logs, Prefect's database and the terminal show `***` (the generated-input test drives every command with
credentials in every position: tests/test_generated_input.py)."""

from __future__ import annotations

import json
import logging
import os

import pytest

from dropout_lab.analysis import history, tracking
from dropout_lab.cli.compare import one_line
from dropout_lab.core import data
from dropout_lab.redact import credentials_in, host_only, redact, redact_logs, split_credentials
from dropout_lab.runtime.processes import TrainingFailed
from flows.compare import compare, main
from tests.refusals import SECRET, one_line_refusal
from tests.test_reliability import args_for, cli

PAIR = f"alice:{SECRET}"


def refused(capfd, argv: list[str]) -> str:
    return one_line_refusal(capfd, 2, main, *argv)


def test_credentials_in_urls_are_redacted():
    assert (
        redact("from https://alice:s3cret@mirror.example/c.tar.gz (x)")
        == "from https://***@mirror.example/c.tar.gz (x)"
    )
    assert redact("http://token@h/x and http://u:p@w@h2/") == "http://***@h/x and http://***@h2/"
    assert redact("no url, a@b.c") == "no url, a@b.c"


@pytest.mark.parametrize("form", [
    "postgresql://alice:pa/{s}@db.example:5432/x",  # raw '/', '#', '?' and space: SQLAlchemy takes them
    "postgresql://alice:pa#{s}@db.example/x",
    "mysql://alice:pa?{s}@db.example/x",
    "postgresql+psycopg://alice:pa {s}@db.example/x",
    "postgresql://db.example/x?sslmode=require&sslpassword={s}",  # libpq's key passphrase
    "host=db.example password='{s} with spaces' user=alice",  # a quoted DSN value
    'host=db.example password = "{s}"',
    "alice:{s}@db.example:1",  # a Dask address without a scheme
    "'alice:{s}@db.example:1'",  # ... quoted, as libraries print it
    "'alice:{s}@[::1]:9/db'",  # ... at an IPv6 address, echoed by argparse (found by the generated-input test)
])  # fmt: skip
def test_every_form_a_library_accepts_is_redacted(form):
    """The audit's forms that were printed in the clear (#42 case 8), in a sentence as messages put them."""
    text = form.format(s="s3cretQZ")
    shown = redact(f"could not open {text}: refused")
    assert "s3cretQZ" not in shown and shown.endswith("refused") and "***" in shown
    assert any("s3cretQZ" in c for c in credentials_in(text)) or "@" not in text or "://" not in text


def test_a_webhook_is_shown_by_its_host_alone():
    assert host_only("https://hooks.slack.com/services/T000/B000/XXXX") == "https://hooks.slack.com/…"
    assert host_only("http://[::1]:9/hook?token=x") == "http://[::1]:9/…" and host_only("not a url") == "***"


def test_a_failing_mirror_with_credentials_never_shows_the_password(tmp_path):
    with pytest.raises(data.DownloadError) as e:
        data.ensure_cifar10(tmp_path, "http://alice:s3cret@127.0.0.1:9/c.tar.gz")
    assert "s3cret" not in str(e.value) and "http://***@127.0.0.1:9/" in str(e.value)


def test_a_dead_api_url_with_credentials_is_redacted_in_the_error_line(tmp_path):
    proc = cli(args_for(tmp_path), {"PREFECT_API_URL": "http://bob:hunter2@127.0.0.1:9/api"})
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "hunter2" not in out and "http://***@127.0.0.1:9/api" in out


def test_the_error_line_is_one_line_without_secrets():
    err = TrainingFailed("CheckpointError: bad\nTraceback (most recent call last):\n  ...", "crash")
    assert one_line(err) == "TrainingFailed: CheckpointError: bad"
    assert one_line(ConnectionError("at http://u:pw@h/api")) == "ConnectionError: at http://***@h/api"


def test_every_log_record_loses_url_credentials_before_any_handler(caplog):
    redact_logs()
    log = logging.getLogger("dropout_lab.test")
    with caplog.at_level(logging.INFO, logger="dropout_lab.test"):
        log.info("tracking at %s", f"http://{PAIR}@127.0.0.1:5000")
        try:
            raise RuntimeError(f"POST https://{PAIR}@host/api failed")
        except RuntimeError:
            log.exception("MLflow said")
    text = caplog.text + "".join(r.exc_text or "" for r in caplog.records)
    assert "s3cret" not in text and "http://***@127.0.0.1:5000" in text and "https://***@host/api" in text


def test_credentials_in_a_url_are_sent_as_basic_auth():
    plain, auth = split_credentials("https://alice:s%40cret@mirror.example:8443/cifar.tar.gz")
    assert plain == "https://mirror.example:8443/cifar.tar.gz" and auth == "Basic YWxpY2U6c0BjcmV0"
    assert split_credentials("https://mirror.example/x") == ("https://mirror.example/x", None)


def test_prefect_s_database_never_holds_a_tracking_uri_s_credentials(prefect_harness, tmp_path, monkeypatch):
    """A flow run whose MLflow store refuses it: its Failed state, its logs and its events as Prefect
    stored them show `***@`, never the password."""
    pytest.importorskip("mlflow")
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://{PAIR}@127.0.0.1:9")
    state = compare(dataset="fake", data_dir=str(tmp_path / "d"), out=str(tmp_path / "o"),
                    cache_dir=str(tmp_path / "c"), return_state=True)  # fmt: skip
    assert state.is_failed() and "***@127.0.0.1:9" in state.message
    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
        states = client.read_flow_run_states(run_id)
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
        events = client.request("POST", "/events/filter", json={
            "filter": {"any_resource": {"id": [f"prefect.flow-run.{run_id}"]}}, "limit": 50}).json()  # fmt: skip
    stored = json.dumps([run.model_dump(mode="json"), [s.model_dump(mode="json") for s in states],
                         [log.model_dump(mode="json") for log in logs], events])  # fmt: skip
    password = SECRET
    assert "***@" in stored and password not in stored


@pytest.mark.parametrize(
    "text",
    [
        "postgresql://lab@host/history?password=s3cret",
        "postgresql+psycopg://lab@h/db?sslmode=disable&password=s3cret",
        "http://alice:s3cret@host:5000",
        "tcp://alice:s3cret@127.0.0.1:1",
        "host=h port=5432 password=s3cret dbname=x",
        "https://bucket/x?X-Amz-Signature=s3cret&X-Amz-Credential=s3cret",
        "https://h/cb#access_token=s3cret",
        "sqlite:/alice:s3cret@host/x",  # a URL that went through a path: its '//' collapsed
    ],
)
def test_one_redaction_hides_every_form_of_a_secret(text):
    assert SECRET not in redact(text) and "***" in redact(text)


def test_a_password_in_a_history_url_s_query_is_hidden_everywhere_the_url_is_shown():
    url = "postgresql://lab@host/history?password=s3cret"
    assert SECRET not in history.shown(url)
    with pytest.raises(history.HistoryError) as e:
        history.read("postgresql://lab@127.0.0.1:9/history?password=s3cret")
    assert SECRET not in str(e.value)
    with pytest.raises(ValueError) as e:
        tracking.check_store("postgresql://lab@127.0.0.1:9/history?password=s3cret")
    assert SECRET not in str(e.value)


def test_mlflow_prints_no_run_links_of_its_own(monkeypatch, tmp_path):
    pytest.importorskip("mlflow")
    import importlib

    monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", raising=False)
    importlib.reload(tracking)  # before MLflow is imported: its own "🏃 View run ... at: URL" stays off stdout
    assert os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] == "true"


def test_a_dask_address_with_credentials_is_refused_without_them(capfd, tmp_path):
    err = refused(capfd, ["--dataset", "fake", "--data-dir", str(tmp_path / "d"), "--task-runner", "dask",
                          "--dask-address", f"tcp://alice:{SECRET}@127.0.0.1:1"])  # fmt: skip
    assert "--dask-address tcp://***@127.0.0.1:1" in err and list(tmp_path.iterdir()) == []


def test_addresses_the_project_writes_into_artifacts_tags_and_messages_carry_no_credentials(monkeypatch, tmp_path):
    """The Prefect UI's address (report links, the MLflow run's Prefect tag, the alert's link) and the
    MLflow run's page (the Prefect run's link artifact) go through the one redaction."""
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

    from tasks.report import ui_base

    with temporary_settings(updates={PREFECT_API_URL: f"http://{PAIR}@prefect.example/api", PREFECT_UI_URL: None}):
        assert ui_base() == "http://***@prefect.example"
    with temporary_settings(updates={PREFECT_UI_URL: f"https://ui.example/?token={SECRET}"}):
        assert SECRET not in ui_base() and ui_base().startswith("https://ui.example/")

    class Run:
        info = type("Info", (), {"experiment_id": "7"})

    monkeypatch.setattr(tracking, "client", lambda uri: type("C", (), {"get_run": lambda self, run_id: Run})())
    page = tracking.run_page(f"https://{PAIR}@mlflow.example/?token={SECRET}", "abc")
    assert SECRET not in page and "alice" not in page, page
    assert page.endswith(f"#/experiments/7/runs/abc{tracking.TRAINING_VIEW}"), page
