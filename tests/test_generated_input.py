"""Every command driven with generated hostile input: odd numbers, unicode, huge strings, unknown flags, and
URLs with credentials in every position, on the command line and in the environment. Whatever comes, a
command answers with exit 0 (it would start its work) or 2 (refused), a refusal is one line on stderr and
leaves nothing behind, and no secret appears in any output. (Hypothesis: a fixed number of examples per
command, so the suite's time stays bounded.)

The commands run in this process up to the point where their work would begin: there the test stops them
(a run's temporary server, serve.py's automation) and counts them as accepted."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is not installed (pip install -e '.[dev]')")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from deployments import notify, reclaim, serve  # noqa: E402
from dropout_lab import cli  # noqa: E402
from dropout_lab.cli.compare import build_parser, run_from_command_line  # noqa: E402
from dropout_lab.cli.history import build_parser as history_parser  # noqa: E402
from dropout_lab.runtime import processes, temporary_server  # noqa: E402

SECRET = "s3cr3tQZ"
HOSTS = ["127.0.0.1:9", "127.0.0.1:1", "[::1]:9"]  # loopback, nothing listens: every probe answers at once
SCHEMES = ["http", "https", "postgresql", "postgresql+psycopg", "postgresql+asyncpg", "mysql", "sqlite", "tcp",
           "file", "bogus", "mssql"]  # fmt: skip
SECRET_PARAMETERS = ["password", "passwd", "token", "access_token", "sig", "api_key", "X-Amz-Signature", "secret",
                     "auth", "pwd"]  # fmt: skip


@st.composite
def secret_urls(draw) -> str:
    """A URL carrying SECRET somewhere a URL carries credentials."""
    scheme, host = draw(st.sampled_from(SCHEMES)), draw(st.sampled_from(HOSTS))
    name = draw(st.sampled_from(SECRET_PARAMETERS))
    raw = draw(st.sampled_from(["/", "#", "?", " ", "%2F"]))  # what SQLAlchemy takes inside a password
    where = draw(st.sampled_from(["password", "user", "query", "second query", "fragment", "both", "dsn", "raw",
                                  "no scheme", "quoted dsn", "sslpassword"]))  # fmt: skip
    return {
        "password": f"{scheme}://alice:{SECRET}@{host}/db",
        "user": f"{scheme}://{SECRET}@{host}/db",
        "query": f"{scheme}://{host}/db?{name}={SECRET}",
        "second query": f"{scheme}://{host}/db?x=1&{name}={SECRET}",
        "fragment": f"{scheme}://{host}/db#{name}={SECRET}",
        "both": f"{scheme}://bob:{SECRET}@{host}/db?{name}={SECRET}",
        "dsn": f"{scheme}://{host}/db?sslmode=disable&{name}={SECRET}&connect_timeout=1",
        "raw": f"{scheme}://alice:pa{raw}{SECRET}@{host}/db",
        "no scheme": f"alice:{SECRET}@{host}/db",
        "quoted dsn": f"host=127.0.0.1 {name}='{SECRET} x' dbname=db",
        "sslpassword": f"{scheme}://{host}/db?sslmode=require&sslpassword={SECRET}",
    }[where]


ODD = ["nan", "inf", "-inf", "-1", "0", "1e309", "1.5", "0x10", "１２", "", " ", "auto", "Auto", "--", "-5", "1,5",
       "9" * 400, "٣", "ß", "\u202e", "a\x00b", "../..", "/", "/proc/x", "~", "$HOME", "'; rm -rf /"]  # fmt: skip
# Free text never holds SECRET outside a URL (Hypothesis draws literals of this module): a bare word is
# not a credential, and the commands may echo an argument they refuse.
free_text = st.text(max_size=40).filter(lambda t: SECRET not in t)
huge_text = st.text(min_size=3000, max_size=3500).filter(lambda t: SECRET not in t)
values = st.one_of(
    st.sampled_from(ODD), secret_urls(), free_text, huge_text, huge_text.map(lambda t: f"sqlite:///{t}"),
    st.integers(-(10**30), 10**30).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
)  # fmt: skip


def flags_of(parser) -> list[str]:
    return sorted(o for o in parser._option_string_actions if o.startswith("--") and o != "--help")


def argvs(flags: list[str]):
    """0 to 4 flags, each with 0 to 2 values, plus now and then an unknown flag."""
    pair = st.tuples(st.sampled_from([*flags, "--bogus-flag"]), st.lists(values, max_size=2))
    return st.lists(pair, max_size=4).map(lambda pairs: [x for flag, vals in pairs for x in (flag, *vals)])


ENV = ["MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "DROPOUT_LAB_CIFAR10_URL", "DROPOUT_LAB_MEASURED"]
# Things that are not files where a file is named (the trust store): a folder, a device, a link's target.
NOT_FILES = ["/", "/dev/zero", "/dev/null", "/proc/self/fd/0", "."]
environments = st.dictionaries(st.sampled_from(ENV), secret_urls() | st.sampled_from(NOT_FILES), max_size=3)


class Accepted(BaseException):
    """The command got past every check: its work would begin here."""


def refuse_to_start(*args, **kwargs):
    raise Accepted


COMMANDS = {
    "compare.py": (lambda argv: run_from_command_line(None, argv), flags_of(build_parser())),
    "dropout-lab history": (lambda argv: cli.main(["history", *argv]), flags_of(history_parser())),
    "serve.py": (serve.main, [*flags_of(build_parser()), "--cron", "--timezone", "--reclaim-after", "--name"]),
    "notify.py": (notify.main, ["--webhook", "--off", "--deployment"]),
    "reclaim.py": (reclaim.main, ["--after", "--off"]),
}


@pytest.fixture
def stopped_before_work(monkeypatch):
    monkeypatch.setattr(temporary_server, "serving", refuse_to_start)  # compare.py: its run would begin
    monkeypatch.setattr(processes, "prestart", lambda: None)
    monkeypatch.setattr(serve.reclaim, "switch_on", refuse_to_start)  # serve.py: its serving would begin
    monkeypatch.delenv("PREFECT_API_URL", raising=False)


def drive(command: str, argv: list[str], env: dict[str, str], api: str | None, capfd) -> tuple[int, str, str, list]:
    """(exit status, stdout, stderr, what the working folder holds after) of one command in a fresh folder,
    with this environment and PREFECT_API_URL (Prefect reads its settings once: set as its own setting)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    run, _ = COMMANDS[command]
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    with tempfile.TemporaryDirectory(prefix="hostile-") as folder:
        os.chdir(folder)
        os.environ.update(env)
        try:
            with temporary_settings(updates={PREFECT_API_URL: api} if api else {}):
                code = run(argv)
        except Accepted:
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 2
        finally:
            os.chdir(saved_cwd)
            os.environ.clear()
            os.environ.update(saved_env)
        left = sorted(p.name for p in Path(folder).iterdir())
    out, err = capfd.readouterr()
    return code, out, err, left


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_answers_hostile_input_in_one_line_with_no_secret(command, capfd, stopped_before_work):
    """...and a refusal leaves nothing behind."""

    @settings(max_examples=100, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
    @given(argv=argvs(COMMANDS[command][1]), env=environments, api=st.none() | secret_urls())
    def check(argv: list[str], env: dict[str, str], api: str | None) -> None:
        code, out, err, left = drive(command, argv, env, api, capfd)
        assert code in (0, 2), (command, argv, env, api, code, err[-2000:])
        assert SECRET not in out + err, (command, argv, env, api, out[-2000:], err[-2000:])
        assert "Traceback" not in out + err, (command, argv, err[-3000:])
        if code == 2:
            assert err.startswith("error: ") and err.count("\n") == 1, (command, argv, env, err[-3000:])
            assert left == [], (command, argv, env, left)

    check()
