"""The command line of `python flows/compare.py` (and `deployments/serve.py`): flags built from the flow's
declared parameters, and the checks before any work. Imports neither torch nor Prefect's engine, so
`--help` and a refused value answer at once.
"""

from __future__ import annotations

import argparse
import os
import sys
from types import UnionType
from typing import Annotated, Literal, Union, get_args, get_origin

from dropout_lab import probe
from dropout_lab.cli.oneline import Parser, say
from dropout_lab.config import PARAMETERS, element_type, flag, help_text
from dropout_lab.probe import ProbeFailed, within_deadline
from dropout_lab.redact import redact

RUNNER_FLAGS = ("task_runner", "dask_address", "verbose", "history", "plan")  # how a run runs, not what it computes


def build_parser(prog: str = "python flows/compare.py") -> argparse.ArgumentParser:
    """One flag per flow parameter (its type, default and help from the declaration), then how tasks run."""
    parser = Parser(
        prog=prog,
        description="Compare a CNN with and without dropout on CIFAR-10 (Prefect flow).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for name, param in PARAMETERS.parameters.items():
        option, help_, default = flag(name), help_text(param.annotation), param.default
        if isinstance(default, bool):
            parser.add_argument(option, action=argparse.BooleanOptionalAction, default=default, help=help_)
        elif isinstance(default, list) or (words := list_or_words(param.annotation)):
            element = element_type(param.annotation)  # e.g. Rate: Annotated[float, ...]
            element = get_args(element)[0] if get_origin(element) is Annotated else element
            choices = get_args(element) if get_origin(element) is Literal else None  # a word setting's words
            kind = (str if choices else element) if isinstance(default, list) else word_or(element, words)
            parser.add_argument(option, type=kind, nargs="+", default=default, help=help_, choices=choices,
                                metavar=name.upper().rstrip("S"))  # fmt: skip
        else:
            parser.add_argument(option, type=type(default), default=default, help=help_, metavar=name.upper())
    parser.add_argument("--seed", dest="seeds", type=int, nargs="+", help="same as --seeds")
    scale = parser.add_argument_group("scale-out (how tasks run, not what they compute)")
    scale.add_argument("--task-runner", choices=("thread", "dask"), default="thread",
                       help="thread: in this process; dask: prefect-dask's DaskTaskRunner")  # fmt: skip
    scale.add_argument("--dask-address", metavar="tcp://HOST:8786",
                       help="existing Dask scheduler (default with --task-runner dask: a local cluster)")  # fmt: skip
    parser.add_argument("--history", metavar="URL",
                        help="the run history, an MLflow tracking store a team's machines can share: "
                             "postgresql://user@host/db, http://mlflow-server:5000 (default: $MLFLOW_TRACKING_URI, "
                             "else sqlite:///OUT/mlflow.db)")  # fmt: skip
    parser.add_argument("--verbose", action="store_true",
                        help="tracebacks and Dask's log on the terminal too (the run log always has them)")  # fmt: skip
    parser.add_argument("--plan", action="store_true",
                        help="with --seeds auto: print what the run will cost, forecast from seeds of its recipe "
                             "already in the run history, and stop (nothing is trained or created)")  # fmt: skip
    return parser


def list_or_words(annotation) -> tuple[str, ...]:
    """The words a list parameter may also be (`Seeds | Literal["auto"] | None` → ("auto",)); () else."""
    inner = get_args(annotation)[0] if get_origin(annotation) is Annotated else annotation
    if get_origin(inner) not in (Union, UnionType):
        return ()
    return tuple(w for part in get_args(inner) if get_origin(part) is Literal for w in get_args(part))


def word_or(element: type, words: tuple[str, ...]):
    """argparse type: one of `words` as itself, else a value of `element`."""

    def convert(text: str):
        return text if text in words else element(text)

    convert.__name__ = element.__name__  # argparse names it in its "invalid int value" message
    return convert


def words_alone(params: dict) -> None:
    """`--seeds auto`: a word stands alone and becomes the parameter's value (not a list); only where the
    declaration makes a word an alternative to the list (`--augment none flip-crop` is a list of words)."""
    for name, value in params.items():
        alternatives = name in PARAMETERS.parameters and list_or_words(PARAMETERS.parameters[name].annotation)
        if alternatives and isinstance(value, list) and any(isinstance(v, str) for v in value):
            if len(value) != 1:
                raise CliError(f"{flag(name)}: {value[0] if isinstance(value[0], str) else value[-1]} stands alone", 2)
            params[name] = value[0]


class CliError(Exception):
    """A one-line error for the command line, with its exit status."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def parse(argv: list[str] | None, prog: str = "python flows/compare.py") -> tuple[dict, dict]:
    """(flow parameters, how to run: task_runner, dask_address, verbose) from the command line; CliError
    for a runner flag that does not fit (argparse itself exits for --help and unparsable values)."""
    params = vars(build_parser(prog).parse_args(argv))
    how = {k: params.pop(k) for k in RUNNER_FLAGS}
    words_alone(params)
    if how["dask_address"] and how["task_runner"] != "dask":
        raise CliError("--dask-address needs --task-runner dask", 2)
    use_history(how["history"])
    return params, how


HISTORY_ENV = "MLFLOW_TRACKING_URI"  # MLflow's own setting: the run history's store


def use_history(url: str | None) -> None:
    """--history: the store for this process and every process it starts (Dask workers, served runs)."""
    if url is not None:
        if not url.strip():
            raise CliError("--history: must not be empty", 2)
        os.environ[HISTORY_ENV] = url


def refuse_early(argv: list[str]) -> None:
    """The script's first step: answer --help, and refuse a run that cannot work (bad values, devices or
    folders: exit 2; a configured Prefect API that does not answer: exit 1; one line), before torch or
    Prefect's engine is imported; otherwise begin Prefect's temporary server, which then starts while
    the run imports them (dropout_lab/runtime/temporary_server.py)."""
    from dropout_lab.runtime import temporary_server

    global _early
    try:
        params, how = parse(argv)
        if how["plan"]:
            sys.exit(show_plan(params))
        plan = checked_plan(params, dask_address=how["dask_address"])
    except CliError as e:
        sys.exit(fail(e))
    _early = (argv, how, plan)
    temporary_server.begin()


_early: tuple | None = None  # the script's command line as `refuse_early` checked it: (argv, how, plan)


def check_dask(address: str) -> None:
    """The Dask scheduler at `address` completes its handshake within the probe's deadline; CliError (exit 2)."""

    def handshake() -> None:
        from distributed import Client

        # Dask retries a refused connection until its timeout: a scheduler started with the run is still reached.
        Client(address, timeout=f"{max(1.0, probe.PROBE_DEADLINE_S - 2):.0f}s").close()

    try:
        within_deadline(f"--dask-address {address}", handshake, address=address)
    except ProbeFailed as e:
        raise CliError(f"{e} (no Dask scheduler answers there)", 2) from None
    from prefect.settings import PREFECT_API_URL

    # The workers of a scheduler started elsewhere inherit nothing from this process: a temporary server here
    # is one they cannot reach (nor Prefect's threads in them: a training's slot lease then hung).
    if not PREFECT_API_URL.value():
        raise CliError("--dask-address: its workers report to a Prefect server they can reach: start one "
                       "(`prefect server start --host 0.0.0.0`) and export PREFECT_API_URL=http://HEAD:4200/api "
                       "here and where the workers run", 2)  # fmt: skip


def fail(error: CliError) -> int:
    say(str(error))
    return error.exit_code


def check_api_reachable() -> None:
    """With PREFECT_API_URL set (e.g. a `prefect server start`), a real read (its flows) must answer within
    the probe's deadline, not only /health: a half-working API is refused here, before anything is
    created, instead of retried for minutes. Without it, runs use a temporary local server."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        return

    def read_flows() -> None:
        answer = httpx.post(f"{url.rstrip('/')}/flows/filter", json={"limit": 1}, timeout=8)
        answer.raise_for_status()
        if not isinstance(answer.json(), list):
            raise ValueError("its answer is not Prefect's")

    try:
        within_deadline(f"the Prefect API at {url} (PREFECT_API_URL) does not answer a read", read_flows, address=url)
    except ProbeFailed as e:
        raise ConnectionError(
            f"{e}; start it with `prefect server start`, or unset PREFECT_API_URL to run on a temporary local server"
        ) from None


def checked_plan(params: dict, deployed: bool = False, dask_address: str | None = None):
    """The command lines' checks before any work, in one order: parameters, folders and stores, then every
    remote's probe (the Prefect API, a Dask scheduler), and only then the run's folders are created; a
    refusal (exit 2, one line) leaves nothing behind. Returns the run's plan (runtime/preflight.py
    `RunPlan`), which the flow this process runs reuses."""
    from dropout_lab.runtime.preflight import check_parameters

    try:
        plan = check_parameters(params, deployed=deployed, create=False)
        check_environment()
        check_api_reachable()
        if dask_address:
            check_dask(dask_address)
        return plan.create()
    except (ValueError, ConnectionError) as e:
        raise CliError(str(e), 2) from None


def show_plan(params: dict) -> int:
    """--plan: what a --seeds auto run of these flags will cost, forecast from the seeds of its recipe the
    run history already holds (analysis/plan.py); its checks as the run's, nothing trained or created."""
    from dropout_lab.analysis import history
    from dropout_lab.analysis.plan import RECIPE, before_run, recipe_seeds
    from dropout_lab.config import variant_of
    from dropout_lab.runtime.preflight import check_parameters

    try:
        plan = check_parameters(params, create=False)
    except ValueError as e:
        raise CliError(str(e), 2) from None
    if not plan.design.sequential:
        raise CliError("--plan forecasts a --seeds auto run: add --seeds auto", 2)
    uri, first = history.store_uri(plan.folders["out"]), plan.configs[0]
    variants = {variant_of(c) for c in plan.configs}
    recipe = {name: params[name] if name in params else getattr(first, name) for name in RECIPE}
    try:
        rows = history.read(uri) if history.exists(uri) else []
    except history.HistoryError as e:
        raise CliError(str(e), 2) from None
    rows = recipe_seeds(rows, variants, recipe, first.limit_train, first.limit_test)
    words = before_run(rows, len(variants) - 1, plan.design.max_seeds, plan.design.margin, sum(plan.slots.values()))
    print(f"plan {words}" if words else f"plan: {history.shown(uri)} holds no two seeds of this recipe for every "
          "model yet; the run forecasts from its first look (its first wave of seeds)")  # fmt: skip
    return 0


def check_environment() -> None:
    """Prefect's settings as the environment gives them (PREFECT_*), read before Prefect's engine is
    imported: a value Prefect cannot use is one line, not its validation error's fifty."""
    value = os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    if not value.strip().isdigit() or int(value) < 1:
        raise ValueError(f"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS={value!r:.40}: must be a whole number "
                         "of seconds")  # fmt: skip
    try:
        import prefect.settings

        prefect.settings.get_current_settings()
    except Exception as e:  # pydantic's ValidationError: the first field it names
        errors = getattr(e, "errors", lambda: [])()
        where = ".".join(map(str, errors[0]["loc"])) if errors else ""
        why = errors[0]["msg"] if errors else str(e).splitlines()[0]
        raise ValueError(f"Prefect's settings from the environment: {where or 'a setting'}: {why}") from None


def one_line(error: BaseException) -> str:
    """The CLI's last line for a failed run: the error's first line, credentials redacted."""
    from dropout_lab.runtime.signals import Stopped

    text = f"{type(error).__name__}: {error}" if not isinstance(error, Stopped) else str(error)
    return redact((text.strip().splitlines() or [type(error).__name__])[0])


def task_runner_for(kind: str, address: str | None, n_workers: int):
    """`thread` (default: threads in this process, each training in its own subprocess) or `dask`:
    prefect-dask's DaskTaskRunner on an existing scheduler (`address`) or a local cluster."""
    if kind == "thread":
        return None
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": n_workers, "processes": True, "threads_per_worker": 1})


def run_from_command_line(flow, argv: list[str] | None = None) -> int:
    """Run `flow` (flows/compare.py) as its command line asks: checks first (one line, exit 2 or 1), the
    first training processes started while Prefect's temporary server starts, one progress bar per model
    on a terminal, and one last line: `report: FOLDER`, or `error: ...` (exit 1, or 128 + signal)."""
    import atexit
    import contextlib
    import signal
    import threading

    from dropout_lab.runtime import console, temporary_server
    from dropout_lab.runtime.preflight import hand_over, remove_created
    from dropout_lab.runtime.processes import before_exit, prestart
    from dropout_lab.runtime.progress import bars
    from dropout_lab.runtime.signals import Stopped, stop_on_signals

    if _early is not None and argv in (None, _early[0]):  # the script's checks ran first: not again
        _, how, plan = _early
    else:
        try:
            params, how = parse(argv)
            if how["plan"]:
                return show_plan(params)
            plan = checked_plan(params, dask_address=how["dask_address"])
        except CliError as e:
            return fail(e)
    console.quiet(how["verbose"])
    # At exit: the flow has reported its end, the server stops (it may hold the run's last states),
    # then this line, the terminal's last.
    last_line: list[str] = []
    ending = threading.Lock()  # the last line once: at exit, or when a stopped run's API is gone

    def say_last_line() -> None:
        if not ending.acquire(blocking=False):
            return
        temporary_server.stop()
        if last_line:
            print(*last_line, file=sys.stderr if last_line[0] == "error:" else None)

    atexit.register(say_last_line)

    def stopped(signum: int) -> list[str]:
        return ["error:", f"stopped by {signal.Signals(signum).name}: training processes ended, finished epochs "
                "kept in checkpoints; rerun the same command to resume"]  # fmt: skip

    def api_gone(signum: int) -> None:  # stopped, and no API left to report to: end now, the same last line
        if ending.locked():
            return  # the run is ending on its own
        last_line[:] = stopped(signum)
        with contextlib.suppress(Exception):
            before_exit()
        with contextlib.suppress(Exception):
            say_last_line()
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(128 + signum)

    groups = plan.waves[0]
    runner = task_runner_for(how["task_runner"], how["dask_address"], min(len(groups), sum(plan.slots.values())))
    flow_fn = flow if runner is None else flow.with_options(task_runner=runner)
    try:
        with stop_on_signals(gone=api_gone):
            if runner is None:  # trainings start from this process: their fork server can start now
                prestart()
            timeout = int(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"])
            with temporary_server.serving(timeout), bars.shown():  # bars: on a terminal only, one per model
                hand_over(plan)  # the flow takes the plan checked here instead of checking again
                folder = flow_fn(**plan.params)
    except Stopped as e:
        last_line[:] = stopped(e.signum)
        return 128 + e.signum
    except Exception as e:  # Prefect has logged the details; end on one clear line
        last_line[:] = ["error:", one_line(e)]
        remove_created(plan.created)  # a run that failed before any work (a remote) leaves no empty folder
        return 1
    last_line[:] = ["report:", folder]
    return 0
