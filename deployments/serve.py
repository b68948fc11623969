"""Serve the `compare` flow as a scheduled deployment from this machine (the simplest path).

    python deployments/serve.py [--cron "0 2 * * *"] [--timezone UTC] [--name nightly]
                                [--data-root DIR] [--out-root DIR] [--cache-root DIR] [flow flags ...]

Flow flags (`--epochs`, `--data-dir`, `--device`, ...) become the deployment's default parameters;
`python flows/compare.py --help` lists them. The process stays up, runs each scheduled or manually
triggered run (`prefect deployment run compare/nightly`) one at a time, and leaves the schedule
active when it stops (`pause_on_shutdown=False`). A run asked for while another runs waits for it
(AwaitingConcurrencySlot); late scheduled runs collapse to the newest (tasks/late_runs.py);
a run left Pending by a stopped process, or Running with no heartbeat, is marked Crashed, and a run
this process held when it was stopped is queued again (deployments/reclaim.py). Needs a Prefect
server: `prefect server start` and PREFECT_API_URL=http://127.0.0.1:4200/api (see README, "Run on a schedule").
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy  # noqa: E402
from prefect.schedules import Cron  # noqa: E402

from deployments import reclaim  # noqa: E402
from dropout_lab.cli.compare import HISTORY_ENV, RUNNER_FLAGS, CliError, build_parser, checked_plan  # noqa: E402
from dropout_lab.cli.oneline import one_line, say  # noqa: E402
from dropout_lab.runtime.preflight import FLAGS, ROOT_ENV  # noqa: E402
from flows.compare import compare  # noqa: E402

ROOT_FLAGS = {"data_dir": "data-root", "out": "out-root", "cache_dir": "cache-root"}

DEFAULT_CRON = "0 2 * * *"  # nightly at 02:00


DEPLOY_FLAGS = ("name", "cron", "timezone", "data_root", "out_root", "cache_root", "reclaim_after")


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, dict]:
    parser = build_parser("python deployments/serve.py")
    parser.description = (
        "Serve the compare flow on a cron schedule; flow flags set its default parameters. A run's "
        "--data-dir/--out/--cache-dir name sub-folders of the roots fixed here: whoever triggers a run "
        "cannot make this process read or write anywhere else."
    )
    deploy = parser.add_argument_group("deployment")
    deploy.add_argument("--name", default="nightly", help="deployment name (runs are compare/NAME)")
    deploy.add_argument("--cron", default=DEFAULT_CRON, help="cron schedule of the runs")
    deploy.add_argument("--timezone", default="UTC", help="time zone of the cron schedule")
    deploy.add_argument("--reclaim-after", metavar="SECONDS", type=reclaim.seconds, default=reclaim.DEFAULT_AFTER_S,
                        help="a run Pending this long (its process stopped) is marked Crashed "
                        f"(default {reclaim.DEFAULT_AFTER_S})")  # fmt: skip
    for name, env in ROOT_ENV.items():
        deploy.add_argument(f"--{ROOT_FLAGS[name]}", metavar="DIR", default=os.environ.get(env, "."),
                            help=f"every run's {FLAGS[name]} must lie inside (default: ${env} or .)")  # fmt: skip
    args = parser.parse_args(argv)
    options = argparse.Namespace(**{k: getattr(args, k) for k in DEPLOY_FLAGS}, history=args.history)
    # Deployment parameters are the flow's; how tasks run (--task-runner) is not one of them.
    params = {k: v for k, v in vars(args).items() if k not in (*DEPLOY_FLAGS, *RUNNER_FLAGS)}
    return options, params


@one_line
def main(argv: list[str] | None = None) -> int:
    options, params = parse(argv)
    try:
        try:
            ZoneInfo(options.timezone)
            Cron(options.cron, timezone=options.timezone)  # validates the expression
        except (ValueError, ZoneInfoNotFoundError) as e:
            raise CliError(f"--cron/--timezone: {e}", 2) from None
        # The runs this process starts inherit its environment: that is where the roots are fixed.
        roots = {env: str(Path(getattr(options, ROOT_FLAGS[name].replace("-", "_"))).resolve())
                 for name, env in ROOT_ENV.items()}  # fmt: skip
        if options.history:  # every served run records there, whatever its parameters say
            roots[HISTORY_ENV] = options.history
        previous = {env: os.environ.get(env) for env in roots}
        os.environ.update(roots)
        try:
            checked_plan(params, deployed=True)  # the defaults must lie inside the roots too
        except CliError:
            for env, value in previous.items():  # refused: leave the caller's environment as it was
                if value is None:
                    os.environ.pop(env, None)
                else:
                    os.environ[env] = value
            raise
    except CliError as e:
        say(str(e))
        return e.exit_code
    # The runs it starts send Prefect's heartbeats as often as the reclaim automation expects them.
    os.environ.setdefault(reclaim.HEARTBEAT_ENV, str(reclaim.HEARTBEAT_S))
    reclaim.switch_on(options.reclaim_after)
    deployment = f"{compare.name}/{options.name}"
    requeue(deployment)  # what the last serving process held when it stopped runs now
    compare.serve(
        name=options.name,
        schedules=[Cron(options.cron, timezone=options.timezone)],
        parameters=params,
        pause_on_shutdown=False,  # a restart of this process must not pause the schedule
        # One run at a time on this machine; a run asked for meanwhile waits for the slot (ENQUEUE), it
        # is never dropped. Late scheduled runs are collapsed by the flow itself (late_runs.py).
        global_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE),
        tags=["dropout-lab"],
        description="Dropout vs baseline on CIFAR-10 (dropout-lab)",
    )
    requeue(deployment)  # stopped (SIGTERM): what the runner cancelled on its way out is queued at once
    return 0


def requeue(deployment: str) -> None:
    requeued, restored = reclaim.requeue(deployment)
    for run in requeued:
        print(f"re-queued {run.name} ({run.id}): the serving process stopped before it finished", flush=True)
    for run in restored:
        print(f"kept {run.name} ({run.id}) as it ended: it had finished before the serving process stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
