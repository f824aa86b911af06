"""``sightline run --when-new-span``: what a cron line or a Kubeflow recurring run calls.

Exit codes a scheduler can act on: 0 when the span ran, or when there was nothing new
(the latest span already succeeded or failed); 75 (``EX_TEMPFAIL``) when another run holds
the home, so the next tick tries again; 1 when the run failed or cannot start.
"""

from __future__ import annotations

import dataclasses
import sys

import click
from rich.markup import escape

from pipelines import configs, metadata_store, run_control, schedule
from pipelines.cli.common import console, emit

EXIT_ALREADY_RUNNING = 75  # sysexits.h EX_TEMPFAIL: "try again later"


def claim_new_span(config: configs.RunConfig, paths: configs.Paths, as_json: bool,
                   ) -> tuple[run_control.HomeLock, configs.RunConfig, dict[str, str]]:
    """If the latest span needs a run: the home's lock, the config pinned to that span
    (``data.span``: a span landing meanwhile waits for the next call) and the run's
    labels. Otherwise exits.

    The span's record is read with the lock held, so two schedulers never both decide
    to run one span. Nothing here imports TensorFlow: a "nothing new" call takes well
    under a second.
    """
    if not config.data.root:
        raise click.UsageError("--when-new-span needs your data: --data DIR --pattern "
                               "'span-{SPAN}/annotations.json'")
    if config.data.span is not None:
        raise click.UsageError("--when-new-span picks the span itself; drop data.span")
    try:
        span = schedule.latest_span(config.data.root, config.data.annotations_pattern)
    except schedule.ScheduleError as e:
        raise click.ClickException(str(e)) from e
    try:
        lock = run_control.claim_home(paths)
    except run_control.RunInProgress as e:
        console.print(f"already running: {escape(str(e))}")
        sys.exit(EXIT_ALREADY_RUNNING)
    except run_control.HomeError as e:
        raise click.ClickException(str(e)) from e
    store = metadata_store.open_existing(
        metadata_store.connection_config(config.metadata, paths.home))
    decision = schedule.decide(store, config.pipeline_name, span)
    if not decision.run:
        lock.release()
        emit(_skipped(decision), as_json, lambda out, _: out.print(escape(decision.message)))
        sys.exit(0)
    pinned = dataclasses.replace(config, data=dataclasses.replace(config.data, span=span))
    return lock, pinned, decision.labels()


def _skipped(decision: schedule.Decision) -> dict:
    return {"skipped": True, "span": decision.span, "run_id": decision.last_run,
            "status": decision.last_status, "message": decision.message}
