"""The download path against a loopback HTTP server: success, transient failures, offline."""

import hashlib
import http.server
import threading
from pathlib import Path

import pytest

from dropout_lab.core import data
from dropout_lab.core.data import DownloadError, download_archive, ensure_cifar10
from tests.archives import archive_folder


class ArchiveServer:
    """Serves one archive on 127.0.0.1; the first `failures` GETs send half the bytes and hang up."""

    def __init__(self, payload: bytes, failures: int = 0, status: int = 200, auth: str | None = None):
        self.payload, self.failures, self.status, self.requests = payload, failures, status, 0
        self.auth = auth  # the Authorization header it requires, if any
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self.send_response(server.status)
                self.send_header("Content-Length", str(len(server.payload)))
                self.end_headers()

            def do_GET(self):
                if self.headers.get("Method") == "HEAD":  # torchvision's redirect probe: headers only
                    return self.do_HEAD()
                server.requests += 1
                if server.auth and self.headers.get("Authorization") != server.auth:
                    self.send_error(401)
                    return
                if server.status != 200:
                    self.send_error(server.status)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(server.payload)))
                self.end_headers()
                if server.requests <= server.failures:  # drop the connection mid-file
                    self.wfile.write(server.payload[: len(server.payload) // 2])
                    self.wfile.flush()
                    self.connection.close()
                    return
                self.wfile.write(server.payload)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/cifar-10-python.tar.gz"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def archive_bytes(tiny_cifar, tmp_path, monkeypatch) -> bytes:
    """The tiny dataset as an archive, and that archive's md5 standing in for the official one."""
    payload = archive_folder(tiny_cifar / "cifar-10-batches-py", tmp_path / "a.tar.gz").read_bytes()
    monkeypatch.setattr(data, "ARCHIVE_MD5", hashlib.md5(payload).hexdigest())
    return payload


@pytest.fixture
def serve():
    servers = []

    def start(payload, **kw):
        servers.append(ArchiveServer(payload, **kw))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def test_download_verifies_and_extracts(archive_bytes, serve, tmp_path):
    server = serve(archive_bytes)
    info = ensure_cifar10(tmp_path / "d", url=server.url)
    assert (tmp_path / "d" / "cifar-10-python.tar.gz").read_bytes() == archive_bytes
    assert Path(info.root).name == "cifar-10-batches-py" and server.requests == 1
    # A second call finds the extracted copy and never touches the network.
    ensure_cifar10(tmp_path / "d", url=server.url)
    assert server.requests == 1


def test_interrupted_download_leaves_no_file_that_looks_good(archive_bytes, serve, tmp_path):
    server = serve(archive_bytes, failures=1)
    data_dir = tmp_path / "d"
    data_dir.mkdir()
    with pytest.raises(DownloadError):
        download_archive(server.url, data_dir)
    assert list(data_dir.iterdir()) == []  # the half file stayed in a temp folder, now removed


def test_corrupted_transfer_fails_md5_and_is_retryable(archive_bytes, serve, tmp_path, monkeypatch):
    monkeypatch.setattr(data, "ARCHIVE_MD5", "0" * 32)
    server = serve(archive_bytes)
    with pytest.raises(DownloadError, match="md5"):
        ensure_cifar10(tmp_path / "d", url=server.url)
    assert not (tmp_path / "d" / "cifar-10-python.tar.gz").exists()


def test_offline_error_names_url_and_where_to_put_the_file(tmp_path):
    url = "http://127.0.0.1:9/cifar-10-python.tar.gz"  # discard port: connection refused
    with pytest.raises(DownloadError) as err:
        ensure_cifar10(tmp_path / "d", url=url)
    msg = str(err.value)
    assert url in msg
    assert str((tmp_path / "d" / "cifar-10-python.tar.gz").resolve()) in msg
    assert str((tmp_path / "d" / "cifar-10-batches-py").resolve()) in msg


def test_fetch_task_retries_through_a_transient_failure(prefect_harness, archive_bytes, serve, tmp_path):
    from tasks.fetch import fetch_cifar10

    server = serve(archive_bytes, failures=2)
    task = fetch_cifar10.with_options(retry_delay_seconds=0, cache_policy=None, persist_result=False)
    info = task(str(tmp_path / "d"), "cifar10", server.url)
    assert server.requests == 3
    assert (Path(info.root) / "data_batch_5").is_file()


def test_an_unknown_host_is_not_retried_a_timeout_is(prefect_harness, tmp_path, monkeypatch):
    """Offline, the name does not resolve: one attempt and the clear line (no retries with backoff);
    a timeout may pass, so it is retried."""
    import socket
    import urllib.error

    from dropout_lab.core import data
    from tasks.fetch import fetch_cifar10

    attempts = []

    def urlopen(*args, error, **kwargs):
        attempts.append(error)
        raise error

    task = fetch_cifar10.with_options(retry_delay_seconds=0, cache_policy=None, persist_result=False)
    for error, tries in ((urllib.error.URLError(socket.gaierror(-2, "Name or service not known")), 1),
                         (TimeoutError("timed out"), 4)):  # fmt: skip
        attempts.clear()
        monkeypatch.setattr(data.urllib.request, "urlopen", lambda *a, e=error, **k: urlopen(*a, error=e, **k))
        state = task(str(tmp_path / "d"), "cifar10", "https://no-such-host.invalid/c.tar.gz", return_state=True)
        assert state.is_failed() and len(attempts) == tries
        assert "Offline?" in str(state.result(raise_on_failure=False))


def test_fetch_task_does_not_retry_bad_data(prefect_harness, tmp_path):
    from tasks.fetch import fetch_cifar10

    data_dir = tmp_path / "d"
    data_dir.mkdir()
    (data_dir / "cifar-10-python.tar.gz").write_bytes(b"not a tar")
    task = fetch_cifar10.with_options(retry_delay_seconds=0, cache_policy=None, persist_result=False)
    state = task(str(data_dir), "cifar10", "http://127.0.0.1:9/x", return_state=True)
    assert state.is_failed() and state.state_details.task_run_id
    assert "cannot extract" in str(state.result(raise_on_failure=False))


def test_a_mirror_url_with_credentials_authenticates_and_never_shows_them(archive_bytes, serve, tmp_path):
    server = serve(archive_bytes, auth="Basic YWxpY2U6czNjcmV0")  # alice:s3cret
    with pytest.raises(DownloadError) as refused:  # the wrong password: refused, the URL shown redacted
        ensure_cifar10(tmp_path / "d", url=server.url.replace("http://", "http://alice:wrong@"))
    assert "wrong" not in str(refused.value) and "http://***@127.0.0.1" in str(refused.value)
    info = ensure_cifar10(tmp_path / "d", url=server.url.replace("http://", "http://alice:s3cret@"))
    assert Path(info.root).name == "cifar-10-batches-py"
