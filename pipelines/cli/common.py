"""Options and helpers every ``sightline`` sub-command shares."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console

from pipelines import configs, metadata_store

if TYPE_CHECKING:
    from ml_metadata.metadata_store import metadata_store as mlmd

console = Console(stderr=True, soft_wrap=True)

home_option = click.option(
    "--home", default=None, help="Sightline home (default $SIGHTLINE_HOME or ./.sightline)."
)
json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout."
)
config_option = click.option(
    "--config", "config_name", default="default", show_default=True,
    type=click.Choice(sorted(configs.CONFIGS)), help="Preset in pipelines/configs.py.",
)
overrides_option = click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE",
    help="Override a setting, e.g. --set train.epochs=3 (repeatable; `sightline config` "
         "lists every key).",
)


def load_config(config_name: str, overrides: Iterable[str]) -> configs.RunConfig:
    """The config, or a usage error naming the bad key or value (before anything runs)."""
    try:
        return configs.load(config_name, overrides)
    except ValueError as e:
        raise click.UsageError(str(e)) from e


metadata_option = click.option(
    "--metadata", "metadata", default=None, envvar=metadata_store.ENV, metavar="URL",
    help="ML Metadata on MySQL, e.g. mysql://user:password@host:3306/mlmd or "
         "mysql://user@/mlmd?socket=/run/mysqld/mysqld.sock (default $SIGHTLINE_METADATA, "
         "else <home>/metadata.sqlite).",
)


def open_metadata(home: str | None, metadata: str | None) -> mlmd.MetadataStore:
    """The ML Metadata store to read (``runs.connect``); a bad URL or an unusable store is
    a one-line error."""
    from pipelines.reports import runs

    try:
        return runs.connect(metadata_store.connection_config(metadata, configs.home_dir(home)))
    except (ValueError, metadata_store.MetadataStoreError) as e:
        raise click.ClickException(str(e)) from e


def running_run_id(home: str | None) -> str | None:
    """The id of the run holding the home now: only it may be shown as "running"."""
    from pipelines import run_control

    holder = run_control.running_run(configs.home_dir(home))
    return holder.run_id if holder else None


def reports_dir(home: str | None, name: str) -> str:
    return os.path.join(configs.home_dir(home), "reports", name)


def emit(value: Any, as_json: bool, render: Callable[[Console, Any], None]) -> None:
    """JSON on stdout with --json, else ``render`` to the terminal."""
    if as_json:
        click.echo(json.dumps(value, indent=2, sort_keys=True))
    else:
        render(console, value)
