"""Every command's ``--help`` shows an example, one command per line, as its docstring has it."""

from __future__ import annotations

import inspect
from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from publisher.cli import cli


def commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Yield the name path of every command below ``group`` that is not itself a group."""
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))
        else:
            yield (*path, name)


def command_at(path: tuple[str, ...]) -> click.Command:
    """Return the command named by ``path``."""
    found: click.Command = cli
    for name in path:
        assert isinstance(found, click.Group)
        found = found.commands[name]
    return found


def example_of(command: click.Command) -> list[str]:
    """Return the lines after ``Example:`` in the command's docstring."""
    doc = inspect.cleandoc(command.help or "")
    _, marker, rest = doc.partition("Example:\n")
    assert marker, f"{command.name}: no Example: block in the docstring"
    return [line.strip() for line in rest.splitlines() if line.strip()]


ALL = sorted(commands(cli))


def test_every_command_is_covered() -> None:
    assert ("send",) in ALL and ("subscribers", "add") in ALL and len(ALL) >= 14


@pytest.mark.parametrize("path", ALL, ids=" ".join)
def test_help_shows_the_example_unwrapped(path: tuple[str, ...]) -> None:
    example = example_of(command_at(path))
    assert example and all(line.startswith(f"publisher {' '.join(path)}") for line in example)
    result = CliRunner().invoke(cli, [*path, "--help"], prog_name="publisher")
    assert result.exit_code == 0, result.output
    shown = [line.strip() for line in result.output.splitlines()]
    assert "Example:" in shown
    # Each line of the example is a line of its own: click did not rewrap the block.
    start = shown.index("Example:") + 1
    assert shown[start:start + len(example)] == example
