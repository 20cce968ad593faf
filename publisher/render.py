"""The Jinja2 environment: packaged templates, user overrides, strict about unknown names.

Every fixed string of the templates goes through gettext (Jinja2's i18n extension); the
catalogs ship in ``publisher/locale``. Which language a template speaks is the ``locale``
variable of its context (a :class:`Language`): the site's by default, an article's own on its
page, its feed item and its email. Dates, numbers and plurals follow the same language.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import jinja2
import jinja2.ext
from babel import Locale, UnknownLocaleError
from babel.dates import DateTimeFormat, get_date_format, parse_pattern
from babel.numbers import format_decimal
from babel.support import NullTranslations, Translations
from jinja2 import nodes
from markupsafe import Markup, escape

from publisher.calendar import Event
from publisher.config import Config
from publisher.errors import ConfigError, TemplateError
from publisher.topics import tag_key

_HERE = Path(__file__).resolve().parent
LOCALE_DIR = _HERE / "locale"
DOMAIN = "messages"
SHIPPED_LANGUAGES = ("en", "de", "az", "ar")
# The date pattern of a language without a catalog: CLDR's long format (e.g. "20 juillet 1969").
# A catalog gives its own pattern (see Language.longdate).
_CLDR_LONG: Literal["long"] = "long"


def parse_locale(tag: str) -> Locale:
    """Return the Babel locale of a BCP 47 tag (``de``, ``pt-BR``, ``az-Latn``).

    Raise ValueError for a tag that names no language Babel knows.
    """
    try:
        return Locale.parse(tag.strip().replace("_", "-"), sep="-")
    except (UnknownLocaleError, ValueError, TypeError) as exc:
        raise ValueError(f"unknown language {tag!r} ({exc})") from None


@dataclass(frozen=True, eq=False)
class Language:
    """One language as the templates use it: tag, writing direction, catalog, formats."""

    tag: str  # as configured or written in the article, e.g. "de-AT"
    locale: Locale
    translations: NullTranslations
    shipped: bool  # whether a catalog of the package translates it

    @functools.cached_property
    def direction(self) -> Literal["ltr", "rtl"]:
        """Return the writing direction, for ``dir``: ``rtl`` for Arabic, Hebrew, Persian…"""
        return "rtl" if self.locale.character_order == "right-to-left" else "ltr"

    def gettext(self, message: str) -> str:
        """Return the translation of ``message``."""
        return str(self.translations.gettext(message))

    def ngettext(self, singular: str, plural: str, n: int) -> str:
        """Return the translation of ``singular``/``plural`` for the number ``n``."""
        return str(self.translations.ngettext(singular, plural, n))

    def pgettext(self, context: str, message: str) -> str:
        """Return the translation of ``message`` in ``context``."""
        return str(self.translations.pgettext(context, message))

    def npgettext(self, context: str, singular: str, plural: str, n: int) -> str:
        """Return the translation of ``singular``/``plural`` in ``context`` for ``n``."""
        return str(self.translations.npgettext(context, singular, plural, n))

    # Babel formats a date or a number in microseconds, and a site prints the same dates and
    # counts of years on page after page: each is formatted once per language.
    _dates: dict[date, str] = field(default_factory=dict, repr=False)
    _years: dict[int, str] = field(default_factory=dict, repr=False)
    _numbers: dict[int | float, str] = field(default_factory=dict, repr=False)
    _times: dict[date, Markup] = field(default_factory=dict, repr=False)
    _texts: dict[str, Markup] = field(default_factory=dict, repr=False)
    _date_fields: dict[tuple[str, int], str] = field(default_factory=dict, repr=False)

    @functools.cached_property
    def _date_format(self) -> str:
        if not self.shipped:
            pattern = str(get_date_format(_CLDR_LONG, locale=self.locale).pattern)
        else:
            # Translators: a CLDR date pattern for a full date with the month's name, e.g.
            # "d. MMMM y" in German (d: day, MMMM: month name, y: year).
            pattern = self.pgettext("date pattern", "d MMMM y")
        return str(parse_pattern(pattern).format)  # e.g. "%(d)s %(MMMM)s %(y)s"

    def longdate(self, day: date) -> str:
        """Format a date with the month's name: ``20 July 1969``, ``20. Juli 1969``."""
        found = self._dates.get(day)
        if found is None:
            found = self._dates[day] = self._date_format % _DateFields(day, self)
        return found

    def time_element(self, day: date) -> Markup:
        """Return ``<time datetime="1969-07-20">20 July 1969</time>``: the date, readable."""
        # One expression where there were two, made once per date: an article page lists
        # every year since: make bench, build.py, cold build <= 1.0 x Hugo.
        found = self._times.get(day)
        if found is None:
            found = self._times[day] = Markup(
                f'<time datetime="{escape(day.isoformat())}">{escape(self.longdate(day))}</time>')
        return found

    def number(self, value: int | float) -> str:
        """Format a number with the language's digits and separators."""
        found = self._numbers.get(value)
        if found is None:
            found = self._numbers[value] = str(format_decimal(value, locale=self.locale))
        return found

    def text(self, message: str) -> Markup:
        """Return a template's fixed text (``{% trans %}`` without variables) in this language."""
        found = self._texts.get(message)
        if found is None:
            # A newstyle message is a format string even without variables ("%%" for "%").
            found = self._texts[message] = Markup(self.gettext(message)) % {}
        return found

    def ago(self, event: Event) -> str:
        """Return how long ago an appearance was first published: ``3 years ago today``."""
        if event.is_first:
            return self.gettext("published today")
        return self.ngettext("%(n)s year ago today", "%(n)s years ago today",
                             event.years_since) % {"n": self.number(event.years_since)}

    def years_on(self, event: Event) -> str:
        """Return the years since first publication: ``7 years on``, ``first publication``."""
        if event.is_first:
            return self.gettext("first publication")
        return self.ngettext("%(n)s year on", "%(n)s years on",
                             event.years_since) % {"n": self.number(event.years_since)}

    def years(self, n: int) -> str:
        """Return a number of years: ``1 year``, ``3 years``."""
        found = self._years.get(n)
        if found is None:
            found = self._years[n] = self.ngettext("%(n)s year", "%(n)s years", n) % {
                "n": self.number(n)}
        return found


# The date fields that show one part of the date only, by their letter: Babel formats each
# once per language and value of that part (a site shows some 10,000 dates, Babel takes 40,000
# instructions for one: make bench, build.py, cold build <= 1.0 x Hugo).
_DATE_PARTS = {"d": "day", "M": "month", "L": "month", "y": "year"}


class _DateFields:
    """The fields of one date as a Babel pattern's ``%(name)s`` slots ask for them."""

    def __init__(self, day: date, language: Language) -> None:
        self.day, self.language = day, language

    def __getitem__(self, name: str) -> str:
        part = _DATE_PARTS.get(name[0])
        if part is None:  # e.g. a weekday: the whole date
            return str(DateTimeFormat(self.day, self.language.locale)[name])
        kept = self.language._date_fields
        key = (name, getattr(self.day, part))
        found = kept.get(key)
        if found is None:
            found = kept[key] = str(DateTimeFormat(self.day, self.language.locale)[name])
        return found


@functools.lru_cache(maxsize=64)
def language(tag: str, fallback: str | None = None) -> Language:
    """Return the :class:`Language` of a BCP 47 tag.

    A tag Babel does not know (e.g. an article's ``lang: xx``) keeps its name but speaks the
    ``fallback`` tag's language; without one it raises ValueError.
    """
    try:
        locale = parse_locale(tag)
    except ValueError:
        if fallback is None:
            raise
        known = language(fallback)
        return Language(tag.strip(), known.locale, known.translations, known.shipped)
    found = Translations.load(str(LOCALE_DIR), [locale], DOMAIN)
    shipped = isinstance(found, Translations) or locale.language == "en"
    return Language(tag.strip(), locale, found, shipped)


def packaged_templates() -> Path:
    """Return the folder of the templates shipped with the package."""
    installed = _HERE / "templates"
    # An installed wheel carries the templates inside the package; a source checkout has them
    # at the top level next to the package.
    return installed if installed.is_dir() else _HERE.parent / "templates"


def config_environment(config: Config) -> jinja2.Environment:
    """Return the environment of a configuration; a missing templates folder or an unknown
    language is a ConfigError naming the key."""
    site = config.site
    if site.templates_dir is not None and not site.templates_dir.is_dir():
        raise ConfigError(f"templates folder {site.templates_dir} does not exist",
                          path=config.path, field="site.templates_dir")
    try:
        return make_environment(site.templates_dir, site.language)
    except ValueError as exc:
        raise ConfigError(str(exc), path=config.path, field="site.language") from None


def language_of(article_lang: str | None, site_language: str) -> Language:
    """Return the language of an article: its own ``lang`` if set, else the site's."""
    return language(article_lang or site_language, site_language)


def _locale_of(context: jinja2.runtime.Context) -> Language:
    found = context.resolve_or_missing("locale")
    if not isinstance(found, Language):
        raise TemplateError("the variable 'locale' is not a language", path=context.name,
                            field="locale")
    return found


@jinja2.pass_context
def _gettext(context: jinja2.runtime.Context, message: str) -> str:
    return _locale_of(context).gettext(message)


@jinja2.pass_context
def _template_gettext(context: jinja2.runtime.Context, message: str, **variables: Any) -> str:
    """Translate a ``{% trans %}`` text as Jinja2's newstyle ``gettext`` does."""
    locale = _locale_of(context)
    if not context.eval_ctx.autoescape:
        return locale.gettext(message) % variables
    if variables:
        return Markup(locale.gettext(message)) % variables
    return locale.text(message)


@jinja2.pass_context
def _ngettext(context: jinja2.runtime.Context, singular: str, plural: str, n: int) -> str:
    return _locale_of(context).ngettext(singular, plural, n)


@jinja2.pass_context
def _pgettext(context: jinja2.runtime.Context, message_context: str, message: str) -> str:
    return _locale_of(context).pgettext(message_context, message)


@jinja2.pass_context
def _npgettext(context: jinja2.runtime.Context, message_context: str, singular: str,
               plural: str, n: int) -> str:
    return _locale_of(context).npgettext(message_context, singular, plural, n)


@jinja2.pass_context
def _longdate(context: jinja2.runtime.Context, day: date) -> str:
    return _locale_of(context).longdate(day)


@jinja2.pass_context
def _time_element(context: jinja2.runtime.Context, day: date) -> Markup:
    return _locale_of(context).time_element(day)


@jinja2.pass_context
def _number(context: jinja2.runtime.Context, value: int | float) -> str:
    return _locale_of(context).number(value)


@jinja2.pass_context
def _ago(context: jinja2.runtime.Context, event: Event) -> str:
    return _locale_of(context).ago(event)


@jinja2.pass_context
def _years_on(context: jinja2.runtime.Context, event: Event) -> str:
    return _locale_of(context).years_on(event)


@jinja2.pass_context
def _years(context: jinja2.runtime.Context, n: int) -> str:
    return _locale_of(context).years(n)


class FragmentCache(jinja2.ext.Extension):
    """``{% cache key, … %}…{% endcache %}``: render a part of a template once per key.

    The parts are kept in the context's ``fragments`` dict, which the caller gives for as long
    as what the part shows stays the same (a build gives one to all its article pages);
    without it the part is rendered each time. The key names what may differ meanwhile.
    """

    tags = {"cache"}  # noqa: RUF012 (as jinja2.ext.Extension declares it)

    def parse(self, parser: jinja2.parser.Parser) -> nodes.Node:
        """Read the keys and the body up to ``{% endcache %}``."""
        lineno = next(parser.stream).lineno
        keys = [parser.parse_expression()]
        while parser.stream.skip_if("comma"):
            keys.append(parser.parse_expression())
        body = parser.parse_statements(("name:endcache",), drop_needle=True)
        where = nodes.Const(f"{parser.name}:{lineno}")
        call = self.call_method("_fragment", [where, nodes.Tuple(keys, "load")])
        return nodes.CallBlock(call, [], [], body).set_lineno(lineno)

    @staticmethod
    @jinja2.pass_context
    def _fragment(context: jinja2.runtime.Context, where: str, key: tuple[object, ...],
                  caller: jinja2.runtime.Macro) -> str:
        kept = context.resolve_or_missing("fragments")
        if not isinstance(kept, dict):
            return caller()
        found: str | None = kept.get((where, key))
        if found is None:
            found = kept[where, key] = caller()
        return found


def make_environment(templates_dir: Path | None = None,
                     language_tag: str = "en") -> jinja2.Environment:
    """Build the environment: the user's folder first, then the packaged templates.

    ``language_tag``: the language of every template whose context names no other ``locale``.
    """
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
        extensions=["jinja2.ext.i18n", FragmentCache],
    )
    # A message spread over several template lines is one line in the catalog.
    env.policies["ext.i18n.trimmed"] = True
    env.install_gettext_callables(  # type: ignore[attr-defined]
        gettext=_gettext, ngettext=_ngettext, pgettext=_pgettext, npgettext=_npgettext,
        newstyle=True)
    # One call per {% trans %} where Jinja2's wrapper makes two, and each text without
    # variables made once per language: make bench, build.py, cold build <= 1.0 x Hugo.
    env.globals["gettext"] = _template_gettext
    env.globals["locale"] = language(language_tag)
    env.filters["isodate"] = lambda d: d.isoformat()
    env.filters["longdate"] = _longdate
    env.filters["time_element"] = _time_element
    env.filters["number"] = _number
    env.filters["ago"] = _ago
    env.filters["years"] = _years
    env.filters["years_on"] = _years_on
    env.filters["webcal"] = webcal_url
    # The folder of a tag's feeds: tags/<key>/ (publisher.topics).
    env.filters["tag_key"] = tag_key
    # Upper-cases the first letter only: capitalize would lower-case a German noun.
    env.filters["upperfirst"] = lambda text: text[:1].upper() + text[1:]
    return env


def webcal_url(url: str) -> str:
    """Return the ``webcal://`` form of an http(s) URL: calendar programs offer to subscribe."""
    return "webcal://" + url.split("://", 1)[1]


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
