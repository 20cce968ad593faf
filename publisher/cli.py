"""The ``publisher`` command line: each command loads the config and calls one library function."""

from __future__ import annotations

import functools
import re
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import click

from publisher import config as config_module
from publisher.config import (
    LOG_FORMATS,
    SUBSCRIBER_STATUSES,
    Config,
    LogFormat,
    SubscriberStatus,
)
from publisher.errors import ConfigError, ContentError, PublisherError

# Each command imports what it uses when it runs: the site, the ledger (SQLAlchemy), mail and
# the web service are each slow to import, and a command needs at most some of them.
if TYPE_CHECKING:
    import socket

    from publisher.ledger import Ledger

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
    return cached


# C0 and C1 controls and DEL: a title or a server's reply could otherwise move the cursor,
# recolour the terminal or fake lines of the report.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """Return text with its control characters escaped (``\\r``, ``\\x1b``), for a terminal."""
    return _CONTROL.sub(lambda match: repr(match.group())[1:-1], text)


def echo_lines(lines: Sequence[str], *, err: bool = False) -> None:
    """Print lines of a report, each with its control characters escaped."""
    click.echo("\n".join(map(printable, lines)), err=err)


def reports_errors(func: F) -> F:
    """Turn a PublisherError into a message on stderr and a non-zero exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        """Run the command, reporting a PublisherError as a message and an exit code."""
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            click.echo(f"error: {printable(str(exc))}", err=True)
            sys.exit(EXIT_CONFIG)
        except PublisherError as exc:
            click.echo(f"error: {printable(str(exc))}", err=True)
            sys.exit(EXIT_PROBLEMS)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@config_option
@click.version_option(package_name="anniversary-publisher")
def cli() -> None:
    """Republish dated articles on their anniversaries."""


# --- site: build, check, calendar, import -------------------------------------------------

DATE = click.DateTime(formats=["%Y-%m-%d"])


def _as_day(value: datetime | None) -> date | None:
    return value.date() if value is not None else None


def _echo_problems(problems: Sequence[PublisherError | str]) -> None:
    for problem in problems:
        click.echo(f"error: {printable(str(problem))}", err=True)


@cli.command()
@config_option
@click.option("--date", "day", type=DATE, default=None,
              help="Build the site as it stands on this day (default: today in the site's zone).")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Write the site here instead of site.output_dir.")
@click.pass_context
@reports_errors
def build(ctx: click.Context, day: datetime | None, out: Path | None) -> None:
    """Write the archive pages and the feeds; broken articles are listed and left out."""
    from publisher import site

    config = load_config(ctx)
    report = site.build_site(config, _as_day(day), out=out)
    _echo_problems(report.errors)
    click.echo(report.summary())
    if config.site.websub_hub is not None and (
            out is None or out.absolute() == config.site.output_dir.absolute()):
        # Only the folder served at base_url is what the feed URLs name: tell the hub.
        from publisher import websub

        pings = websub.announce(config, report.changed_feeds)
        if pings:
            echo_lines([f"websub:{ping.line()}" for ping in pings])
    if not report.ok:
        sys.exit(EXIT_PROBLEMS)


@cli.command()
@config_option
@click.option("--date", "day", type=DATE, default=None,
              help="Check the site as it stands on this day (default: today in the site's zone).")
@click.pass_context
@reports_errors
def check(ctx: click.Context, day: datetime | None) -> None:
    """Load every article and render every page and feed in memory; list every problem."""
    from publisher import site

    problems = site.check_site(load_config(ctx), _as_day(day))
    for problem in problems:
        click.echo(printable(str(problem)))
    if problems:
        click.echo(f"{len(problems)} problem(s) found", err=True)
        sys.exit(EXIT_PROBLEMS)
    click.echo("no problems found")


@cli.command("calendar")
@config_option
@click.option("--from", "start", type=DATE, default=None,
              help="First day to list (default: today in the site's zone).")
@click.option("--days", type=click.IntRange(min=1), default=30, show_default=True,
              help="How many days to list.")
@click.pass_context
@reports_errors
def calendar_command(ctx: click.Context, start: datetime | None, days: int) -> None:
    """List the coming appearances: date, years since first publication, slug and title."""
    from publisher import site

    events, errors = site.upcoming_events(load_config(ctx), _as_day(start), days)
    _echo_problems(errors)
    width = max((len(event.article.slug) for event in events), default=0)
    for event in events:
        click.echo(f"{event.on.isoformat()}  {event.years_since:>3}  "
                   f"{event.article.slug:<{width}}  {printable(event.article.title)}")
    if errors:
        sys.exit(EXIT_PROBLEMS)


@cli.command("import")
@click.argument("files", nargs=-1, required=True,
                type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Write the Markdown files here (default: next to each source).")
@click.option("--force", is_flag=True, help="Overwrite an existing Markdown file.")
@click.option("--keep", "keep_source", is_flag=True,
              help="Leave each .txt in place (remove it yourself: both would claim one slug).")
@reports_errors
def import_command(files: tuple[Path, ...], out: Path | None, force: bool,
                   keep_source: bool) -> None:
    """Turn plain .txt articles into Markdown with front matter, renaming each source."""
    from publisher.content import import_plain

    failures: list[PublisherError] = []
    for path in files:
        try:
            target, retired = import_plain(path, out, force=force, keep_source=keep_source)
        except ContentError as exc:
            failures.append(exc)
            continue
        moved = f" (source renamed to {retired.name})" if retired is not None else ""
        click.echo(f"{path} -> {target}{moved}")
    _echo_problems(failures)
    if failures:
        sys.exit(EXIT_PROBLEMS)


# --- email: subscribers, send, status ------------------------------------------------------


def _ledger(ctx: click.Context, *, read_only: bool = False) -> Ledger:
    from publisher.ledger import Ledger

    return Ledger.open(load_config(ctx).state.database_url, read_only=read_only)


STATUS_CHOICE = click.Choice(SUBSCRIBER_STATUSES)


@cli.group()
@config_option
def subscribers() -> None:
    """Manage subscribers (those added or imported here are confirmed)."""


@subscribers.command("add")
@config_option
@click.argument("email")
@click.option("--name", default=None, help="The subscriber's name, used in the greeting.")
@click.option("--timezone", default=None,
              help="IANA time zone for the delivery time (default: the site's zone).")
@click.option("--resubscribe", is_flag=True,
              help="Subscribe an address again that unsubscribed or bounced.")
@click.pass_context
@reports_errors
def subscribers_add(ctx: click.Context, email: str, name: str | None, timezone: str | None,
                    resubscribe: bool) -> None:
    """Add a confirmed subscriber, or update a known one's name and time zone."""
    from publisher.ledger import subscriber_row

    with _ledger(ctx) as ledger:
        subscriber, outcome = ledger.add_subscriber(subscriber_row(email, name, timezone),
                                                    resubscribe=resubscribe)
    click.echo(f"{subscriber.email}: {outcome}")


@subscribers.command("import")
@config_option
@click.argument("file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--include-suppressed", is_flag=True,
              help="Subscribe again the addresses in FILE that unsubscribed or bounced.")
@click.pass_context
@reports_errors
def subscribers_import(ctx: click.Context, file: Path, include_suppressed: bool) -> None:
    """Import a CSV of email,name,timezone; bad rows are listed, the good ones imported.

    Addresses that unsubscribed or bounced are listed and left out.
    """
    from publisher.ledger import import_csv

    with _ledger(ctx) as ledger:
        report = import_csv(ledger, file, include_suppressed=include_suppressed)
    _echo_problems(report.errors)
    for email, status in report.suppressed:
        click.echo(f"suppressed: {email} is {status}; left out (--include-suppressed "
                   "subscribes it again)", err=True)
    counts = [f"{report.added} added", f"{report.unchanged} already known"]
    if report.suppressed:
        counts.append(f"{len(report.suppressed)} suppressed")
    if report.resubscribed:
        counts.append(f"{report.resubscribed} resubscribed")
    counts.append(f"{len(report.errors)} rejected")
    pending = f", {report.skipped_pending} pending left out" if report.skipped_pending else ""
    click.echo(", ".join(counts) + pending)
    if report.errors:
        sys.exit(EXIT_PROBLEMS)


@subscribers.command("list")
@config_option
@click.option("--status", type=STATUS_CHOICE, default=None, help="Only this status.")
@click.pass_context
@reports_errors
def subscribers_list(ctx: click.Context, status: str | None) -> None:
    """List subscribers, one per line: address, status, time zone, name (tab-separated)."""
    with _ledger(ctx, read_only=True) as ledger:
        for s in ledger.iter_subscribers(cast("SubscriberStatus | None", status)):
            click.echo("\t".join(map(printable, (s.email, s.status, s.timezone or "-",
                                                 s.name or ""))))


@subscribers.command("remove")
@config_option
@click.argument("email")
@click.option("--forget", is_flag=True,
              help="Delete the address itself too: nothing then stops it being added again.")
@click.pass_context
@reports_errors
def subscribers_remove(ctx: click.Context, email: str, forget: bool) -> None:
    """Remove a subscriber: name, zone and delivery history go; the address stays suppressed.

    A sign-up never confirmed, or any address with --forget, is deleted outright.
    """
    with _ledger(ctx) as ledger:
        outcome = ledger.remove(email, forget=forget)
    if outcome is None:
        click.echo(f"error: {email} is not a subscriber", err=True)
        sys.exit(EXIT_PROBLEMS)
    if outcome == "deleted":
        click.echo(f"removed {email}")
    else:
        click.echo(f"removed {email}; kept as suppressed, so no import or unconfirmed "
                   "sign-up adds it back")


@subscribers.command("export")
@config_option
@click.option("--status", type=STATUS_CHOICE, default=None, help="Only this status.")
@click.pass_context
@reports_errors
def subscribers_export(ctx: click.Context, status: str | None) -> None:
    """Write subscribers as CSV to stdout; `subscribers import` reads it back."""
    from publisher.ledger import export_csv

    with _ledger(ctx, read_only=True) as ledger:
        export_csv(ledger, sys.stdout, cast("SubscriberStatus | None", status))


class _ProgressBar:
    """A click progress bar, drawn only on a terminal and sized at the first report."""

    def __init__(self) -> None:
        self.bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = click.progressbar(length=total, label="sending").__enter__()
        self.bar.length = total
        self.bar.update(done - self.bar.pos)

    def close(self) -> None:
        """Finish the bar, if one was drawn."""
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


class _StopSignals:
    """SIGINT and SIGTERM ask the send to stop after the messages in flight; a second ends it."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def is_set(self) -> bool:
        """Return whether a stop signal arrived."""
        return bool(self.signum)

    def _received(self, signum: int, _frame: object) -> None:
        # Only a flag is set: a handler raising here could cut a server's 250 off its record.
        self.signum = self.signum or signum
        for sig in self.SIGNALS:  # the next one ends the process (the leases cover it)
            signal.signal(sig, signal.SIG_DFL)

    def __enter__(self) -> _StopSignals:
        self._previous = {sig: signal.signal(sig, self._received) for sig in self.SIGNALS}
        return self

    def __exit__(self, *_exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@cli.command()
@config_option
@click.option("--date", "day", type=DATE, default=None,
              help="Send the events of this day (default: today in the site's zone).")
@click.option("--dry-run", is_flag=True, help="Show what would be queued; change nothing.")
@click.pass_context
@reports_errors
def send(ctx: click.Context, day: datetime | None, dry_run: bool) -> None:
    """Email a day's events to every confirmed subscriber (never twice), then any retries due."""
    from publisher import dispatch

    config = load_config(ctx)
    bar = _ProgressBar() if sys.stdout.isatty() else None
    with _StopSignals() as stop:
        try:
            report = dispatch.send_date(config, _as_day(day), dry_run=dry_run, progress=bar,
                                        stop=stop)
        finally:
            if bar is not None:
                bar.close()
    _echo_problems(report.problems)
    echo_lines(report.lines())
    if stop.signum:
        click.echo(f"stopped by {signal.Signals(stop.signum).name}: the messages in flight were "
                   "finished; the rest stays queued for the next run")
        sys.exit(128 + stop.signum)
    if not report.ok:
        sys.exit(EXIT_PROBLEMS)


@cli.command()
@config_option
@click.option("--date", "day", type=DATE, default=None,
              help="Only the deliveries of this day's events.")
@click.pass_context
@reports_errors
def status(ctx: click.Context, day: datetime | None) -> None:
    """Show deliveries, failures, bounces, subscribers, the clock, what comes next, WebSub."""
    from publisher import bounces, dispatch, schedule, websub

    config = load_config(ctx)
    echo_lines(dispatch.delivery_status(config, _as_day(day)).lines())
    echo_lines(bounces.return_status(config, _as_day(day)).lines())
    echo_lines(schedule.clock_status(config).lines())
    echo_lines(websub.websub_status(config).lines())


@cli.command("bounces")
@config_option
@click.pass_context
@reports_errors
def bounces_command(ctx: click.Context) -> None:
    """Read every configured mailbox of bounces and complaints once; print what was found."""
    from publisher import bounces

    report = bounces.process(load_config(ctx))
    _echo_problems(report.problems)
    echo_lines([report.line()])
    if report.problems:
        sys.exit(EXIT_PROBLEMS)


# --- the daemon ---------------------------------------------------------------------------


@cli.command()
@config_option
@click.option("--log-format", type=click.Choice(LOG_FORMATS), default="text", show_default=True,
              help="text: readable lines; json: one JSON object per line.")
@click.option("--serve", "serve_web", is_flag=True,
              help="Also run the web service (as `publisher serve`) on web.host:web.port.")
@click.pass_context
@reports_errors
def run(ctx: click.Context, log_format: LogFormat, serve_web: bool) -> None:
    """Keep the site and the email up to date: tick every few seconds until SIGTERM or Ctrl-C."""
    from publisher import daemon, web

    config = load_config(ctx)
    sock = _listen(config, None, None) if serve_web else None
    daemon.configure_logging(log_format)
    with web.beside(config, sock):
        daemon.run_daemon(config, preview_root=web.own_url(sock) if sock is not None else None)


# --- web: the HTTP service ----------------------------------------------------------------


@cli.command()
@config_option
@click.option("--host", default=None,
              help="Address to listen on (default: web.host, 127.0.0.1).")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=None,
              help="Port to listen on (default: web.port, 8000).")
@click.option("--access-log/--no-access-log", default=True, show_default=True,
              help="Log one line per request.")
@click.option("--log-format", type=click.Choice(LOG_FORMATS), default="text", show_default=True,
              help="text: readable lines; json: one JSON object per line.")
@click.pass_context
@reports_errors
def serve(ctx: click.Context, host: str | None, port: int | None, access_log: bool,
          log_format: LogFormat) -> None:
    """Serve the built site, sign-up, unsubscribe and previews over HTTP until stopped."""
    from publisher import daemon, web

    config = load_config(ctx)
    sock = _listen(config, host, port)
    daemon.configure_logging(log_format)
    daemon.announce(config, web.own_url(sock))
    web.serve(config, sock, access_log=access_log)


def _listen(config: Config, host: str | None, port: int | None) -> socket.socket:
    from publisher import web

    host = host or config.web.host
    port = config.web.port if port is None else port
    try:
        return web.bind(host, port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                          path=config.path, field="web.host/web.port") from None


def main() -> None:
    """Run the command line."""
    cli(prog_name="publisher")
