"""The ``publisher`` command line: each command loads the config and calls one library function."""

from __future__ import annotations

import re
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import click

from publisher import config as config_module
from publisher.calendar import Event, count_years
from publisher.config import (
    LOG_FORMATS,
    SUBSCRIBER_STATUSES,
    Config,
    LogFormat,
    SubscriberStatus,
)
from publisher.errors import ConfigError, ContentError, PublisherError, SubscriberError

# Each command imports what it uses when it runs: the site, the ledger (SQLAlchemy), mail and
# the web service are each slow to import, and a command needs at most some of them.
if TYPE_CHECKING:
    import socket

    from publisher.dispatch import SendReport
    from publisher.ledger import Ledger
    from publisher.status import ClockStatus, ReturnStatus, Status, WebSubStatus
    from publisher.websub import PingState

EXIT_PROBLEMS = 1  # the command ran, but some input was rejected
EXIT_CONFIG = 2  # bad usage or configuration: nothing was done


def _remember_config(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
    if value is not None:  # given to the group and the command, the command's wins
        ctx.find_root().ensure_object(dict)["config_path"] = value


def _config_option() -> click.Option:
    return click.Option(
        ["--config", "config_path"], type=click.Path(path_type=Path, dir_okay=False),
        expose_value=False, is_eager=True, callback=_remember_config,
        help="Path to publisher.toml (default: ./publisher.toml, else built-in defaults).")


def load_config() -> Config:
    """Load the configuration named by ``--config`` on the group or the command."""
    obj = click.get_current_context().find_root().ensure_object(dict)
    if "config" not in obj:
        obj["config"] = config_module.load(obj.get("config_path"))
    return cast(Config, obj["config"])


# C0 and C1 controls and DEL: a title or a server's reply could otherwise move the cursor,
# recolour the terminal or fake lines of the report.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """Return text with its control characters escaped (``\\r``, ``\\x1b``), for a terminal."""
    return _CONTROL.sub(lambda match: repr(match.group())[1:-1], text)


def echo_lines(lines: Sequence[str], *, err: bool = False) -> None:
    """Print lines of a report, each with its control characters escaped."""
    click.echo("\n".join(map(printable, lines)), err=err)


def _echo_problems(problems: Sequence[PublisherError | str]) -> None:
    for problem in problems:
        click.echo(f"error: {printable(str(problem))}", err=True)


def send_lines(report: SendReport) -> list[str]:
    """Describe a send: events, counts, then failures and warnings."""
    head = f"{report.day}: " if report.day else ""
    out = [f"{head}{len(report.events)} event(s)"]
    verb = "would queue" if report.dry_run else "queued"
    out += [f"  {e.slug} {e.year} ({e.title}): {verb} {e.queued}" for e in report.events]
    if report.dry_run:
        out.append(f"dry run: {report.queued} delivery(ies) to queue, {report.due} already due; "
                   "nothing was changed")
    else:
        out.append(f"sent {report.sent}, deferred {report.deferred}, failed {report.failed}, "
                   f"bounced {report.bounced}, skipped {report.skipped}")
    if report.failures:
        out.append("failures:")
        out += [f"  {failure}" for failure in report.failures]
    out += [f"warning: {warning}" for warning in report.warnings]
    if report.stopped:
        out.append(f"stopped: {report.stopped}")
    return out


def delivery_lines(status: Status) -> list[str]:
    """Describe the ledger: subscribers, deliveries per event and state, failures."""
    from publisher.ledger_reads import DIGEST_SLUG

    out = ["subscribers: " + ", ".join(f"{n} {s}" for s, n in status.subscribers.items())]
    scope = f" for {status.day}" if status.day else ""
    if not status.counts:
        out.append(f"no deliveries{scope}")
    per_event: dict[tuple[date, str, int], list[str]] = {}
    for c in status.counts:
        per_event.setdefault((c.event_on, c.slug, c.year), []).append(f"{c.status} {c.count}")
    for (on, slug, year), states in per_event.items():
        # A digest row's "year" is its date: shown once, as what it is.
        what = "daily digests" if slug == DIGEST_SLUG else f"{slug} {year}"
        out.append(f"{on}  {what}: {', '.join(states)}")
    out.append(f"due now: {status.due}")
    if status.problems:
        out.append(f"failed and retrying{scope}, newest first:")
    for p in status.problems:
        retry = (f" (next try {p.next_attempt_at:%Y-%m-%d %H:%M} UTC)"
                 if p.status == "deferred" else "")
        out.append(f"  {p.status:<8} {p.email}  {p.slug} {p.year}  attempts {p.attempts}  "
                   f"{p.reply or ''}{retry}")
    return out


def return_lines(status: ReturnStatus) -> list[str]:
    """Describe the bounces and complaints per edition, with a warning for each rate over."""
    from publisher.status import COMPLAINT_RATE_LIMIT, HARD_BOUNCE_RATE_LIMIT

    if not status.editions and not status.elsewhere:
        return ["bounces and complaints: none recorded"]
    out = ["bounces and complaints per edition:"] if status.editions else []
    for e in status.editions:
        out.append(f"  {e.on}  {e.slug} {e.year}: sent {e.sent}, hard {e.hard} "
                   f"({e.hard_rate:.2%}), soft {e.soft}, complaints {e.complaints} "
                   f"({e.complaint_rate:.2%})")
    if status.elsewhere:
        counts = ", ".join(f"{kind} {n}" for kind, n in sorted(status.elsewhere.items()))
        out.append(f"bounces and complaints not tied to an edition: {counts}")
    for e in status.editions:
        if e.complaint_rate > COMPLAINT_RATE_LIMIT:
            out.append(f"warning: {e.slug} {e.year}: complaint rate {e.complaint_rate:.2%} is "
                       f"over {COMPLAINT_RATE_LIMIT:.1%} (large mailbox providers refuse bulk "
                       "mail from 0.3%)")
        if e.hard_rate > HARD_BOUNCE_RATE_LIMIT:
            out.append(f"warning: {e.slug} {e.year}: hard bounce rate {e.hard_rate:.2%} is "
                       f"over {HARD_BOUNCE_RATE_LIMIT:.0%}")
    return out


def _utc(instant: datetime) -> str:
    return f"{instant.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def _years(event: Event) -> str:
    return "first publication" if event.is_first else count_years(event.years_since)


def clock_lines(status: ClockStatus) -> list[str]:
    """Describe the clock: last tick, last build, the next publish moments."""
    tick = _utc(status.last_tick) if status.last_tick else "never (is `publisher run` running?)"
    built = status.site_built.isoformat() if status.site_built else "never by `publisher run`"
    out = [f"last tick: {tick}", f"site last built for: {built}"]
    out.append("next anniversary moments:" + ("" if status.upcoming else " none"))
    for moment in status.upcoming:
        slugs = ", ".join(f"{e.article.slug} ({_years(e)})" for e in moment.events)
        out.append(f"  {moment.local:%Y-%m-%d %H:%M} {moment.zone} = "
                   f"{moment.instant:%Y-%m-%d %H:%M} UTC: {slugs}")
    return out


def ping_line(state: PingState) -> str:
    """Describe the WebSub state of one feed in one line."""
    if state.last_at is None:
        last = "never pinged"
    else:
        outcome = "accepted" if state.last_ok else "failed"
        last = f"{outcome} {_utc(state.last_at)}: {state.last_detail}"
    if state.pending and state.next_at is not None:
        last += f"; attempt {state.attempts + 1} at {_utc(state.next_at)}"
    elif state.last_ok is False:
        last += f"; gave up after {state.attempts} attempts until the feed changes again"
    return f"  {state.name}: {last}"


def websub_lines(status: WebSubStatus) -> list[str]:
    """Describe the hub and each feed's last ping."""
    if status.hub is None:
        return ["websub: no hub (site.websub_hub is not set)"]
    return [f"websub hub: {status.hub}", *(ping_line(state) for state in status.feeds)]


class ReportingGroup(click.Group):
    """The command group: each command takes --config; a PublisherError is an exit code."""

    group_class = type  # its groups are ReportingGroups too

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        """Add a command, with ``--config`` as its first option."""
        cmd.params.insert(0, _config_option())
        super().add_command(cmd, name)

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command, turning a PublisherError into a line on stderr and an exit code."""
        try:
            return super().invoke(ctx)
        except PublisherError as exc:
            _echo_problems([exc])
            sys.exit(EXIT_CONFIG if isinstance(exc, ConfigError) else EXIT_PROBLEMS)


@click.group(cls=ReportingGroup, params=[_config_option()],
             context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="anniversary-publisher")
def cli() -> None:
    """Republish dated articles on their anniversaries."""


DATE = click.DateTime(formats=["%Y-%m-%d"])


def _as_day(value: datetime | None) -> date | None:
    return value.date() if value is not None else None


@cli.command()
@click.option("--date", "day", type=DATE, default=None,
              help="Build the site as it stands on this day (default: today in the site's zone).")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Write the site here instead of site.output_dir.")
def build(day: datetime | None, out: Path | None) -> None:
    """Write the archive pages and the feeds; broken articles are listed and left out.

    \b
    Example:
        publisher build
        publisher build --date 2026-03-14 --out /tmp/preview
    """
    from publisher import site

    report = site.publish_site(load_config(), _as_day(day), out=out)
    _echo_problems(report.errors)
    click.echo(f"built {report.day.isoformat()} into {report.output_dir}: {report.pages} pages, "
               f"{report.feeds} feeds ({report.feed_items} items, {report.events_today} today); "
               f"{report.written} files written, {report.unchanged} unchanged")
    if report.pings:
        echo_lines([f"websub:{ping_line(ping)}" for ping in report.pings])
    if not report.ok:
        sys.exit(EXIT_PROBLEMS)


@cli.command()
@click.option("--date", "day", type=DATE, default=None,
              help="Check the site as it stands on this day (default: today in the site's zone).")
def check(day: datetime | None) -> None:
    """Load every article and render every page and feed in memory; list every problem.

    \b
    Example:
        publisher check
        publisher check --date 2028-02-29
    """
    from publisher import site

    problems = site.check_site(load_config(), _as_day(day))
    for problem in problems:
        click.echo(printable(str(problem)))
    if problems:
        click.echo(f"{len(problems)} problem(s) found", err=True)
        sys.exit(EXIT_PROBLEMS)
    click.echo("no problems found")


@cli.command("calendar")
@click.option("--from", "start", type=DATE, default=None,
              help="First day to list (default: today in the site's zone).")
@click.option("--days", type=click.IntRange(min=1), default=30, show_default=True,
              help="How many days to list.")
def calendar_command(start: datetime | None, days: int) -> None:
    """List the coming appearances: date, years since first publication, slug and title.

    \b
    Example:
        publisher calendar
        publisher calendar --from 2026-12-01 --days 31
    """
    from publisher import site

    events, errors = site.upcoming_events(load_config(), _as_day(start), days)
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
def import_command(files: tuple[Path, ...], out: Path | None, force: bool,
                   keep_source: bool) -> None:
    """Turn plain .txt articles into Markdown with front matter, renaming each source.

    \b
    Example:
        publisher import old/*.txt --out content
    """
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


def _ledger(*, read_only: bool = False) -> Ledger:
    from publisher.ledger import Ledger

    return Ledger.open(load_config().state.database_url, read_only=read_only)


STATUS_CHOICE = click.Choice(SUBSCRIBER_STATUSES)


@cli.group()
def subscribers() -> None:
    """Manage subscribers (those added or imported here are confirmed)."""


@subscribers.command("add")
@click.argument("email")
@click.option("--name", default=None, help="The subscriber's name, used in the greeting.")
@click.option("--timezone", default=None,
              help="IANA time zone for the delivery time (default: the site's zone).")
@click.option("--resubscribe", is_flag=True,
              help="Subscribe an address again that unsubscribed or bounced.")
def subscribers_add(email: str, name: str | None, timezone: str | None,
                    resubscribe: bool) -> None:
    """Add a confirmed subscriber, or update a known one's name and time zone.

    \b
    Example:
        publisher subscribers add ada@example.org --name Ada --timezone Europe/London
    """
    from publisher.subscriptions.fields import subscriber_row

    with _ledger() as ledger:
        subscriber, outcome = ledger.add_subscriber(subscriber_row(email, name, timezone),
                                                    resubscribe=resubscribe)
    click.echo(f"{subscriber.email}: {outcome}")


@subscribers.command("import")
@click.argument("file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--include-suppressed", is_flag=True,
              help="Subscribe again the addresses in FILE that unsubscribed or bounced.")
def subscribers_import(file: Path, include_suppressed: bool) -> None:
    """Import a CSV of email,name,timezone; bad rows are listed, the good ones imported.

    Addresses that unsubscribed or bounced are listed and left out.

    \b
    Example:
        publisher subscribers import readers.csv
    """
    from publisher.subscriptions.csvfiles import import_csv

    with _ledger() as ledger:
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
@click.option("--status", type=STATUS_CHOICE, default=None, help="Only this status.")
def subscribers_list(status: SubscriberStatus | None) -> None:
    """List subscribers, one per line (tab-separated): address, status, time zone, name, then
    their choices: frequency, years, time, tags ("-": the site's time, "all": every tag).

    \b
    Example:
        publisher subscribers list --status confirmed
    """
    with _ledger(read_only=True) as ledger:
        for s in ledger.iter_subscribers(status):
            cells = s.choices.cells()
            click.echo("\t".join(map(printable, (
                s.email, s.status, s.timezone or "-", s.name or "", cells["frequency"],
                cells["years"], cells["time"] or "-", cells["tags"] or "all"))))


@subscribers.command("set")
@click.argument("email")
@click.option("--every", "years", flag_value="every", help="Every anniversary (the default).")
@click.option("--milestones", "years", flag_value="milestones",
              help="Only 1, 5, 10, 25, 50, 75, 100 years and every 25 after.")
@click.option("--years", "years", metavar="1,10,50", help="Only these anniversaries.")
@click.option("--each", "frequency", flag_value="each", help="Each article in its own email.")
@click.option("--digest", "frequency", flag_value="digest",
              help="One email per local day with every appearance of that day.")
@click.option("--timezone", default=None, help="IANA time zone of the delivery time.")
@click.option("--time", "at", default=None, metavar="HH:MM",
              help="Local delivery time (empty: the site's publish time).")
@click.option("--tags", default=None, metavar="a,b", help="Only articles with these tags.")
@click.option("--all-tags", is_flag=True, help="Articles about every topic (the default).")
def subscribers_set(email: str, years: str | None, frequency: str | None, timezone: str | None,
                    at: str | None, tags: str | None, all_tags: bool) -> None:
    """Change a subscriber's choices; what is not given stays as it is.

    \b
    Example:
        publisher subscribers set ada@example.org --milestones --digest --time 07:30
        publisher subscribers set ada@example.org --years 1,10,50 --tags science,space
    """
    import dataclasses

    from publisher.preferences import parse_frequency, parse_tags, parse_time, parse_years
    from publisher.subscriptions.fields import check_timezone

    if tags is not None and all_tags:
        raise click.UsageError("give --tags or --all-tags, not both")
    changes: dict[str, Any] = {}
    if years is not None:
        changes["years"] = parse_years(years)
    if frequency is not None:
        changes["frequency"] = parse_frequency(frequency)
    if at is not None:
        changes["at"] = parse_time(at)
    if tags is not None or all_tags:
        changes["tags"] = parse_tags(tags)  # None: every tag
    zone = check_timezone(timezone)
    with _ledger() as ledger:
        found = ledger.find_subscriber(email)
        if found is None:
            raise SubscriberError(f"{email} is not a subscriber")
        choices = dataclasses.replace(found.choices, **changes)
        updated = ledger.set_choices(choices, email=found.email, timezone=zone)
    assert updated is not None
    click.echo(f"{updated.email}: {updated.choices.describe()}"
               f"{f' ({updated.timezone})' if updated.timezone else ''}")


@subscribers.command("remove")
@click.argument("email")
@click.option("--forget", is_flag=True,
              help="Delete the address itself too: nothing then stops it being added again.")
def subscribers_remove(email: str, forget: bool) -> None:
    """Remove a subscriber: name, zone and delivery history go; the address stays suppressed.

    A sign-up never confirmed, or any address with --forget, is deleted outright.

    \b
    Example:
        publisher subscribers remove ada@example.org
    """
    with _ledger() as ledger:
        outcome = ledger.remove(email, forget=forget)
    if outcome is None:
        raise SubscriberError(f"{email} is not a subscriber")
    if outcome == "deleted":
        click.echo(f"removed {email}")
    else:
        click.echo(f"removed {email}; kept as suppressed, so no import or unconfirmed "
                   "sign-up adds it back")


@subscribers.command("export")
@click.option("--status", type=STATUS_CHOICE, default=None, help="Only this status.")
def subscribers_export(status: SubscriberStatus | None) -> None:
    """Write subscribers as CSV to stdout; `subscribers import` reads it back.

    \b
    Example:
        publisher subscribers export --status confirmed > readers.csv
    """
    from publisher.subscriptions.csvfiles import export_csv

    with _ledger(read_only=True) as ledger:
        export_csv(ledger, sys.stdout, status)


class _ProgressBar:
    """A click progress bar, drawn only on a terminal and sized at the first report."""

    def __init__(self) -> None:
        self.bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = click.progressbar(length=total, label="sending").__enter__()
        self.bar.length = total
        self.bar.update(done - self.bar.pos)

    def __enter__(self) -> _ProgressBar | None:
        return self if sys.stdout.isatty() else None

    def __exit__(self, *_exc: object) -> None:
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
@click.option("--date", "day", type=DATE, default=None,
              help="Send the events of this day (default: today in the site's zone).")
@click.option("--dry-run", is_flag=True, help="Show what would be queued; change nothing.")
def send(day: datetime | None, dry_run: bool) -> None:
    """Email a day's events to every confirmed subscriber (never twice), then any retries due.

    \b
    Example:
        publisher send --date 2026-12-17 --dry-run
        publisher send --date 2026-12-17
    """
    from publisher import dispatch

    config = load_config()
    with _StopSignals() as stop, _ProgressBar() as bar:
        report = dispatch.send_date(config, _as_day(day), dry_run=dry_run, progress=bar,
                                    stop=stop)
    _echo_problems(report.problems)
    echo_lines(send_lines(report))
    if stop.signum:
        click.echo(f"stopped by {signal.Signals(stop.signum).name}: the messages in flight were "
                   "finished; the rest stays queued for the next run")
        sys.exit(128 + stop.signum)
    if not report.ok:
        sys.exit(EXIT_PROBLEMS)


@cli.command()
@click.option("--date", "day", type=DATE, default=None,
              help="Only the deliveries of this day's events.")
def status(day: datetime | None) -> None:
    """Show deliveries, failures, bounces, subscribers, the clock, what comes next, WebSub.

    \b
    Example:
        publisher status
        publisher status --date 2026-12-17
    """
    from publisher.status import overview

    found = overview(load_config(), _as_day(day))
    echo_lines(delivery_lines(found.deliveries))
    echo_lines(return_lines(found.returns))
    echo_lines(clock_lines(found.clock))
    echo_lines(websub_lines(found.websub))


@cli.command("bounces")
def bounces_command() -> None:
    """Read every configured mailbox of bounces and complaints once; print what was found.

    \b
    Example:
        publisher bounces
    """
    from publisher import bounces

    report = bounces.process(load_config())
    _echo_problems(report.problems)
    echo_lines([report.line()])
    if report.problems:
        sys.exit(EXIT_PROBLEMS)


log_format_option = click.option(
    "--log-format", type=click.Choice(LOG_FORMATS), default="text", show_default=True,
    help="text: readable lines; json: one JSON object per line.")


@cli.command()
@log_format_option
@click.option("--serve", "serve_web", is_flag=True,
              help="Also run the web service (as `publisher serve`) on web.host:web.port.")
def run(log_format: LogFormat, serve_web: bool) -> None:
    """Keep the site and the email up to date: tick every few seconds until SIGTERM or Ctrl-C.

    \b
    Example:
        publisher run
        publisher run --serve --log-format json
    """
    from publisher import daemon, web

    config = load_config()
    sock = _listen(config, None, None) if serve_web else None
    daemon.configure_logging(log_format)
    with web.beside(config, sock):
        daemon.run_daemon(config, preview_root=web.own_url(sock) if sock is not None else None)


@cli.command()
@click.option("--host", default=None,
              help="Address to listen on (default: web.host, 127.0.0.1).")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=None,
              help="Port to listen on (default: web.port, 8000).")
@click.option("--access-log/--no-access-log", default=True, show_default=True,
              help="Log one line per request.")
@log_format_option
def serve(host: str | None, port: int | None, access_log: bool, log_format: LogFormat) -> None:
    """Serve the built site, sign-up, unsubscribe and previews over HTTP until stopped.

    \b
    Example:
        publisher serve --host 0.0.0.0 --port 8080
    """
    from publisher import daemon, web

    config = load_config()
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
