"""Switch on failure notifications for a deployment: Prefect automations that post to a webhook when one
of its runs ends Failed, or Crashed without being cancelled (a cancelled run passes through Crashed).

    python deployments/notify.py --webhook URL [--deployment compare/nightly]

The webhook gets JSON `{"text": "<subject>\\n<body>"}` (what Slack, Mattermost and most chat
webhooks accept). The URL is kept in the block's secrets (a chat webhook's path is its token): the
block API shows it masked and this command prints its host alone. Run it again to change the URL;
`--off` deletes both automations and the block. Needs PREFECT_API_URL (a `prefect server start`) and
the deployment to exist.
"""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prefect.automations import Automation  # noqa: E402
from prefect.blocks.notifications import CustomWebhookNotificationBlock  # noqa: E402
from prefect.client.orchestration import get_client  # noqa: E402
from prefect.events.actions import SendNotification  # noqa: E402
from prefect.events.schemas.automations import EventTrigger, Posture  # noqa: E402
from prefect.exceptions import ObjectNotFound  # noqa: E402
from prefect.settings import PREFECT_API_URL  # noqa: E402

from dropout_lab.cli.compare import check_api_reachable  # noqa: E402
from dropout_lab.cli.oneline import Parser, one_line, say  # noqa: E402
from dropout_lab.naming import slug  # noqa: E402
from dropout_lab.redact import host_only  # noqa: E402
from tasks.report import ui_base  # noqa: E402
from tasks.server_objects import save_block  # noqa: E402

SUBJECT = "dropout-lab: {{ deployment.name }} run {{ flow_run.name }} {{ flow_run.state.name }}"
# The link is built here, from the API's address: the server renders `ui_url` as None unless its own
# PREFECT_UI_URL is set. Only the parameters the run changed from the deployment's defaults are listed
# (all of them are on the run's page): what makes this run different is what a reader needs.
CHANGED = (
    "{% set ns = namespace(n=0) %}{% for k, v in flow_run.parameters | dictsort %}"
    "{% if deployment.parameters.get(k) != v %}{% set ns.n = ns.n + 1 %}{{ '; ' if ns.n > 1 }}{{ k }}={{ v }}"
    "{% endif %}{% endfor %}{% if ns.n == 0 %}none (the deployment's defaults){% endif %}"
)
BODY = (
    "Flow run '{{ flow_run.name }}' of deployment '{{ deployment.name }}' ended {{ flow_run.state.name }}: "
    "{{ flow_run.state.message }}\nParameters changed from the deployment's: " + CHANGED + "\n"
    "{ui}/runs/flow-run/{{ flow_run.id }}"
)
# A cancelled run passes through Crashed (its process is ended by a signal) on its way to Cancelled: a
# crash is only reported when no Cancelled follows within this many seconds.
CANCELLED_WITHIN_S = 30


def names(deployment: str) -> tuple[str, str, str]:
    """(the Failed automation's name, the Crashed one's, the notification block's) for a deployment."""
    return (f"dropout-lab: {deployment} failed", f"dropout-lab: {deployment} crashed",
            f"dropout-lab-failures-{slug(deployment)}")  # fmt: skip


def switch_on(deployment: str, webhook: str) -> list[Automation]:
    """Create or replace the notification block and the two automations: a run that ends Failed, and a
    run that ends Crashed and is not Cancelled right after (a cancellation is no failure)."""
    with get_client(sync_client=True) as client:
        deployment_id = client.read_deployment_by_name(deployment).id
    failed_name, crashed_name, block_name = names(deployment)
    block = CustomWebhookNotificationBlock(name=block_name, url="{{webhook}}", secrets={"webhook": webhook},
                                           json_data={"text": "{{subject}}\n{{body}}"})  # fmt: skip
    block_id = save_block(block, block_name)
    switch_off(deployment)
    related = {"prefect.resource.id": f"prefect.deployment.{deployment_id}"}
    action = SendNotification(block_document_id=block_id, subject=SUBJECT, body=BODY.replace("{ui}", ui_base()))
    failed = Automation(
        name=failed_name,
        description=f"Post to a webhook when a run of {deployment} fails (deployments/notify.py)",
        trigger=EventTrigger(
            expect={"prefect.flow-run.Failed"},
            match_related=related,
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),  # fmt: skip
        actions=[action],
    ).create()
    crashed = Automation(
        name=crashed_name,
        description=f"Post to a webhook when a run of {deployment} crashes, not when it is cancelled "
        "(deployments/notify.py)",
        trigger=EventTrigger(
            after={"prefect.flow-run.Crashed"},
            expect={"prefect.flow-run.Cancelled"},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related=related,
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=CANCELLED_WITHIN_S),
        ),  # fmt: skip
        actions=[action],
    ).create()
    return [failed, crashed]


def switch_off(deployment: str, block_too: bool = False) -> bool:
    """Delete the deployment's failure automations (and, `block_too`, their webhook block); True if
    there was one."""
    deleted = [delete_named(name) for name in names(deployment)[:2]]  # a list: both are deleted
    if block_too:
        with get_client(sync_client=True) as client:
            try:
                block = client.read_block_document_by_name(names(deployment)[2], "custom-webhook")
                client.delete_block_document(block.id)
                deleted.append(True)
            except ObjectNotFound:
                pass
    return any(deleted)


def delete_named(name: str) -> bool:
    """Delete the automation of that name; True if there was one."""
    try:
        return Automation.read(name=name).delete()
    except (ObjectNotFound, ValueError):
        return False


def api_refusal() -> int | None:
    """The exit status (2), after one line, when there is no Prefect API to hold automations: unset, or
    not answering a real read within the probe's deadline; None when it answers."""
    if not PREFECT_API_URL.value():
        print("error: PREFECT_API_URL is not set: an automation lives on a running Prefect server "
              "(prefect server start)", file=sys.stderr)  # fmt: skip
        return 2
    try:
        check_api_reachable()
    except ConnectionError as e:
        say(str(e))
        return 2
    return None


def webhook_url(text: str) -> str:
    """An http(s) URL with a host (argparse type): anything else is refused before anything is created."""
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"not an http(s) webhook URL: {host_only(text)!r}")
    return text


@one_line
def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python deployments/notify.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--deployment", default="compare/nightly", help="FLOW/DEPLOYMENT to watch")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--webhook",
        metavar="URL",
        type=webhook_url,
        help="where to post a message when a run fails or crashes (http or https)",
    )
    what.add_argument("--off", action="store_true", help="delete the automations and the webhook block")
    args = parser.parse_args(argv)
    if (refused := api_refusal()) is not None:
        return refused
    try:
        if args.off:
            print("removed" if switch_off(args.deployment, block_too=True) else "there were none",
                  *names(args.deployment), sep="; ")  # fmt: skip
            return 0
        automations = switch_on(args.deployment, args.webhook)
    except ObjectNotFound:
        print(f"error: no deployment {args.deployment!r} on this Prefect server", file=sys.stderr)
        return 2
    made = ", ".join(f"'{a.name}' ({a.id})" for a in automations)
    print(f"automations {made} post to {host_only(args.webhook)} when a run fails or crashes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
