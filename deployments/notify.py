"""Switch on failure notifications for a deployment: a Prefect automation that posts to a webhook
whenever one of its runs ends Failed or Crashed.

    python deployments/notify.py --webhook URL [--deployment compare/nightly]

The webhook gets JSON `{"text": "<subject>\\n<body>"}` (what Slack, Mattermost and most chat
webhooks accept). Run it again to change the URL; `--off` deletes the automation. Needs
PREFECT_API_URL (a `prefect server start`) and the deployment to exist.
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
from dropout_lab.naming import slug  # noqa: E402
from dropout_lab.runtime.redact import redact  # noqa: E402

SUBJECT = "dropout-lab: {{ deployment.name }} run {{ flow_run.name }} {{ flow_run.state.name }}"
BODY = (
    "Flow run '{{ flow_run.name }}' of deployment '{{ deployment.name }}' ended {{ flow_run.state.name }}: "
    "{{ flow_run.state.message }}\n{{ flow_run|ui_url }}"
)


def names(deployment: str) -> tuple[str, str]:
    """(automation name, notification block name) for a deployment."""
    return f"dropout-lab: {deployment} failed", f"dropout-lab-failures-{slug(deployment)}"


def switch_on(deployment: str, webhook: str) -> Automation:
    """Create or replace the notification block and the automation; returns the automation."""
    with get_client(sync_client=True) as client:
        deployment_id = client.read_deployment_by_name(deployment).id
    automation_name, block_name = names(deployment)
    block = CustomWebhookNotificationBlock(name=block_name, url=webhook, json_data={"text": "{{subject}}\n{{body}}"})
    block_id = block.save(block_name, overwrite=True)
    switch_off(deployment)
    return Automation(
        name=automation_name,
        description=f"Post to a webhook when a run of {deployment} fails or crashes (deployments/notify.py)",
        trigger=EventTrigger(
            expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
            match_related={"prefect.resource.id": f"prefect.deployment.{deployment_id}"},
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[SendNotification(block_document_id=block_id, subject=SUBJECT, body=BODY)],
    ).create()


def switch_off(deployment: str) -> bool:
    """Delete the deployment's failure automation; True if there was one."""
    try:
        return Automation.read(name=names(deployment)[0]).delete()
    except (ObjectNotFound, ValueError):
        return False


def webhook_url(text: str) -> str:
    """An http(s) URL with a host (argparse type): anything else is refused before anything is created."""
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"not an http(s) webhook URL: {redact(text)!r}")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python deployments/notify.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--deployment", default="compare/nightly", help="FLOW/DEPLOYMENT to watch")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--webhook", metavar="URL", type=webhook_url,
                      help="where to post a message when a run fails or crashes (http or https)")
    what.add_argument("--off", action="store_true", help="delete the automation")
    args = parser.parse_args(argv)
    if not PREFECT_API_URL.value():
        print("error: PREFECT_API_URL is not set: an automation lives on a running Prefect server "
              "(prefect server start)", file=sys.stderr)  # fmt: skip
        return 2
    try:
        check_api_reachable()  # a Prefect API that does not answer: one line within seconds, not minutes
    except ConnectionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        if args.off:
            print("removed" if switch_off(args.deployment) else "there was none", names(args.deployment)[0])
            return 0
        automation = switch_on(args.deployment, args.webhook)
    except ObjectNotFound:
        print(f"error: no deployment {args.deployment!r} on this Prefect server", file=sys.stderr)
        return 2
    print(f"automation '{automation.name}' ({automation.id}) posts to {redact(args.webhook)} on failure")
    return 0


if __name__ == "__main__":
    sys.exit(main())
