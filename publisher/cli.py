"""The ``publisher`` command line: each command loads the config and calls one library function."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from publisher import config as config_module
from publisher.config import Config
from publisher.errors import ConfigError, PublisherError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_PROBLEMS = 1  # the command ran, but some input was rejected
EXIT_CONFIG = 2  # bad usage or configuration: nothing was done


def _remember_config(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
    if value is not None:
        ctx.ensure_object(dict)["config_path"] = value


config_option = click.option(
    "--config", "config_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
    expose_value=False, is_eager=True, callback=_remember_config,
    help="Path to publisher.toml (default: ./publisher.toml, else built-in defaults).",
)


def load_config(ctx: click.Context) -> Config:
    """Load the configuration named by ``--config`` on the group or the command."""
    obj = ctx.find_root().ensure_object(dict)
    path = ctx.ensure_object(dict).get("config_path") or obj.get("config_path")
    cached = obj.get("config")
    if cached is None:
        cached = config_module.load(path)
        obj["config"] = cached
    return cached  # type: ignore[no-any-return]


def reports_errors(func: F) -> F:
    """Turn a PublisherError into a message on stderr and a non-zero exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_CONFIG)
        except PublisherError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_PROBLEMS)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@config_option
@click.version_option(package_name="anniversary-publisher")
def cli() -> None:
    """Republish dated articles on their anniversaries."""


def main() -> None:
    """Run the command line."""
    cli(prog_name="publisher")
