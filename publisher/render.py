"""The Jinja2 environment: packaged templates, user overrides, strict about unknown names."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from pathlib import Path
from types import TracebackType
from typing import Any

import jinja2

from publisher.errors import TemplateError

_HERE = Path(__file__).resolve().parent


def packaged_templates() -> Path:
    """Return the folder of the templates shipped with the package."""
    installed = _HERE / "templates"
    # An installed wheel carries the templates inside the package; a source checkout has them
    # at the top level next to the package.
    return installed if installed.is_dir() else _HERE.parent / "templates"


def make_environment(templates_dir: Path | None = None) -> jinja2.Environment:
    """Build the environment: the user's folder first, then the packaged templates."""
    searchpath = [str(packaged_templates())]
    if templates_dir is not None:
        searchpath.insert(0, str(templates_dir))
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(searchpath),
        autoescape=jinja2.select_autoescape(["html", "htm", "xml"], default_for_string=False),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["isodate"] = lambda d: d.isoformat()
    env.filters["longdate"] = longdate
    return env


def template_file(env: jinja2.Environment, name: str) -> bytes:
    """Return the bytes of a file that is not a template (e.g. the icon), the user's first."""
    loader = env.loader
    folders = (loader.searchpath if isinstance(loader, jinja2.FileSystemLoader)
               else [str(packaged_templates())])
    for folder in folders:
        try:
            return (Path(folder) / name).read_bytes()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise TemplateError(exc.strerror or str(exc), path=Path(folder) / name,
                                field="template") from None
    raise TemplateError("template not found", path=name, field="template")


# strftime("%B") once per month rather than once per date: an archive page lists every year an
# article came back, and the site renders thousands of them.
_MONTHS = tuple(date(2001, month, 1).strftime("%B") for month in range(1, 13))


def longdate(day: date) -> str:
    """Format a date as ``17 May 2020``."""
    return f"{day.day} {_MONTHS[day.month - 1]} {day.year}"


def _template_line(tb: TracebackType | None, names: set[str]) -> tuple[str | None, int | None]:
    # Jinja2 rewrites tracebacks so that template frames carry the template's file and line.
    found: tuple[str | None, int | None] = (None, None)
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename in names or filename.endswith((".html", ".txt", ".xml", ".j2")):
            found = (filename, tb.tb_lineno)
        tb = tb.tb_next
    return found


def render(env: jinja2.Environment, name: str, context: Mapping[str, Any]) -> str:
    """Render one template by name; errors name the template file, line and variable."""
    try:
        template = env.get_template(name)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(exc.message or "syntax error", path=exc.filename or name,
                            line=exc.lineno, field="syntax") from None
    except jinja2.TemplateNotFound:
        raise TemplateError("template not found", path=name, field="template") from None
    return render_template(template, context, template.filename or name)


def compile_string(env: jinja2.Environment, source: str, origin: str) -> jinja2.Template:
    """Compile a template given as text (e.g. from the config); ``origin`` names it in errors."""
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(exc.message or "syntax error", path=origin, field="syntax") from None


def render_template(template: jinja2.Template, context: Mapping[str, Any], origin: str) -> str:
    """Render a compiled template; errors name the template file, line and variable."""
    try:
        return template.render(context)
    except jinja2.UndefinedError as exc:
        filename, line = _template_line(exc.__traceback__, {origin})
        raise TemplateError(f"unknown variable: {exc.message}", path=filename or origin,
                            line=line, field="variable") from None
    except jinja2.TemplateError as exc:
        filename, line = _template_line(exc.__traceback__, {origin})
        raise TemplateError(str(exc), path=filename or origin, line=line,
                            field="render") from None
