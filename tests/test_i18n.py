"""Languages: complete catalogs with CLDR's plural forms, and the site, feeds and emails in the
configured language or the article's own."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from datetime import UTC, date, datetime
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import feedparser
import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.mofile import read_mo
from babel.messages.plurals import get_plural
from babel.messages.pofile import read_po
from lxml import html as lxml_html
from playwright.sync_api import Browser

from publisher import feeds, site
from publisher.calendar import Calendar
from publisher.config import Config
from publisher.content import load_articles
from publisher.errors import ConfigError
from publisher.mail import Mailer, Recipient
from publisher.render import LOCALE_DIR, SHIPPED_LANGUAGES, config_environment, language
from tests.fixtures.content import BASE_URL, WriteArticle

ROOT = Path(__file__).resolve().parents[1]
SECRET = b"secret for the language tests"
DAY = date(2026, 7, 20)
READER = Recipient(7, "reader@example.org", "Nour")


def source_messages() -> dict[object, list[str]]:
    """Extract every message of the templates and code, as ``make catalogs`` does."""
    with open(ROOT / "babel.cfg", encoding="utf-8") as cfg:
        method_map, options_map = parse_mapping_cfg(cfg)
    found: dict[object, list[str]] = {}
    for filename, _line, message, _comments, context in extract_from_dir(
            str(ROOT), method_map, options_map):
        key = (context, message)
        found.setdefault(key, []).append(filename)
    return found


def catalog(lang: str) -> Any:
    with open(LOCALE_DIR / lang / "LC_MESSAGES" / "messages.po", "rb") as po:
        return read_po(po, locale=lang)


@pytest.mark.parametrize("lang", SHIPPED_LANGUAGES)
def test_every_string_of_the_templates_is_translated_in_each_shipped_catalog(lang: str) -> None:
    messages = source_messages()
    assert len(messages) > 80  # the extraction found the templates
    po = catalog(lang)
    missing, untranslated = [], []
    for context, message in messages:
        key = message[0] if isinstance(message, tuple) else message
        entry = po.get(key, context=context)
        if entry is None:
            missing.append((key, messages[(context, message)]))
        elif entry.fuzzy or not all(entry.string if isinstance(entry.string, tuple)
                                    else [entry.string]):
            untranslated.append(key)
    assert missing == [], f"not in {lang}/messages.po (run `make catalogs`, then translate)"
    assert untranslated == []
    # Placeholders kept, plural forms complete (Babel's own checks).
    problems = [(message.id, [str(error) for error in errors])
                for message, errors in po.check() if errors]
    assert problems == []


@pytest.mark.parametrize("lang", SHIPPED_LANGUAGES)
def test_the_compiled_catalog_is_the_po_file(lang: str) -> None:
    with open(LOCALE_DIR / lang / "LC_MESSAGES" / "messages.mo", "rb") as mo:
        compiled = read_mo(mo)
    po = catalog(lang)
    def strings(messages: Any) -> dict[object, object]:
        return {(m.context, tuple(m.id) if isinstance(m.id, (list, tuple)) else m.id):
                tuple(m.string) if isinstance(m.string, (list, tuple)) else m.string
                for m in messages if m.id}

    compiled_strings, strings = strings(compiled), strings(po)
    assert compiled_strings == strings, "run `make catalogs` to compile the .mo files"


@pytest.mark.parametrize("lang", SHIPPED_LANGUAGES)
def test_plural_forms_are_cldr_s(lang: str) -> None:
    po = catalog(lang)
    expected = get_plural(lang)
    assert (po.num_plurals, po.plural_expr) == (expected.num_plurals, expected.plural_expr)


@pytest.mark.parametrize(("lang", "expected"), [
    ("en", ["0 years", "1 year", "2 years", "3 years", "11 years", "100 years"]),
    ("de", ["0 Jahre", "1 Jahr", "2 Jahre", "3 Jahre", "11 Jahre", "100 Jahre"]),
    ("az", ["0 il", "1 il", "2 il", "3 il", "11 il", "100 il"]),
    # zero, one, two, few (3-10), many (11-99), other (100, 101, 102…)
    ("ar", ["0 سنة", "سنة واحدة", "سنتان", "3 سنوات", "11 سنة", "100 سنة"]),
])
def test_plurals_follow_the_language(lang: str, expected: list[str]) -> None:
    assert [language(lang).years(n) for n in (0, 1, 2, 3, 11, 100)] == expected


def test_dates_and_numbers_follow_the_language() -> None:
    day = date(1969, 7, 20)
    assert [language(tag).longdate(day) for tag in SHIPPED_LANGUAGES] == [
        "20 July 1969", "20. Juli 1969", "20 iyul 1969", "20 يوليو 1969"]
    assert language("de").number(12345) == "12.345"
    assert language("en").number(12345) == "12,345"
    # A language without a catalog: English words, its own dates (CLDR's long format).
    french = language("fr")
    assert (french.shipped, french.longdate(day), french.gettext("Hello,")) == (
        False, "20 juillet 1969", "Hello,")
    assert language("de-AT").gettext("Hello,") == "Hallo,"  # the German catalog
    assert (language("ar").direction, language("de").direction) == ("rtl", "ltr")


def test_an_unknown_language_is_a_configuration_error(make_config: Callable[..., Config]) -> None:
    with pytest.raises(ConfigError, match=r"site\.language"):
        config_environment(make_config(language="xx"))
    with pytest.raises(ConfigError, match=r"site\.language: expected a BCP 47 language tag"):
        make_config(language="German!")


@pytest.fixture
def articles(write_article: WriteArticle) -> None:
    """One article in the site's language, one in Arabic."""
    write_article("moon", "The lunar module landed.", title="Moon landing", date="2021-07-20",
                  anniversary="1969-07-20", author="Archive desk")
    write_article("hijri", "> نص مقتبس من الأرشيف.\n\nفقرة ثانية عن الذكرى.",
                  title="ذكرى افتتاح الأرشيف", date="2023-07-20", lang="ar",
                  anniversary="2001-07-20", tags=["أرشيف"])


def built(config: Config) -> Path:
    report = site.build_site(config, DAY)
    assert report.ok
    return config.site.output_dir


@pytest.mark.parametrize(("lang", "heading", "ago"), [
    ("en", "On 20 July 2026", "5 years ago today"),
    ("de", "Am 20. Juli 2026", "heute vor 5 Jahren"),
    ("az", "20 iyul 2026 tarixində", "5 il əvvəl bu gün"),
    ("ar", "في 20 يوليو 2026", "في مثل هذا اليوم قبل 5 سنوات"),
])
def test_the_front_page_speaks_the_site_language(make_config: Callable[..., Config],
                                                 articles: None, lang: str, heading: str,
                                                 ago: str) -> None:
    out = built(make_config(language=lang))
    page = lxml_html.fromstring((out / "index.html").read_bytes())
    assert page.get("lang") == lang
    assert page.get("dir") == ("rtl" if lang == "ar" else "ltr")
    assert " ".join(page.find(".//h1").text_content().split()) == heading
    assert page.xpath("string(//h1/time/@datetime)") == "2026-07-20"
    agos = [span.text_content() for span in page.find_class("ago")]
    assert ago in agos


def test_an_article_in_another_language_sets_its_page_lang_and_dir(
        make_config: Callable[..., Config], articles: None) -> None:
    out = built(make_config(language="de"))
    arabic = lxml_html.fromstring((out / "articles/hijri/index.html").read_bytes())
    assert (arabic.get("lang"), arabic.get("dir")) == ("ar", "rtl")
    meta = arabic.find_class("meta")[0].text_content()
    assert meta.startswith("نُشرت أول مرة في 20 يوليو 2023")
    assert arabic.find_class("tags")[0].text_content() == "الوسوم: أرشيف"
    german = lxml_html.fromstring((out / "articles/moon/index.html").read_bytes())
    assert (german.get("lang"), german.get("dir")) == ("de", "ltr")
    assert "Zuerst erschienen am 20. Juli 2021 von Archive desk, in Erinnerung an den " \
           "20. Juli 1969." in german.find_class("meta")[0].text_content()
    assert "Nächster Jahrestag:" in german.text_content()


def test_feeds_speak_the_language(make_config: Callable[..., Config], articles: None) -> None:
    config = make_config(language="de")
    calendar = Calendar(load_articles(config.site.content_dir).articles)
    built_feeds = feeds.build_feeds(config.site, calendar, DAY, config_environment(config))
    atom = feedparser.parse(built_feeds[feeds.ATOM_NAME])
    assert atom.feed.language == "de"
    titles = {entry.title for entry in atom.entries}
    assert "Moon landing (vor 5 Jahren)" in titles
    assert "ذكرى افتتاح الأرشيف (منذ 3 سنوات)" in titles  # the article's own language
    moon = next(e for e in atom.entries if e.title == "Moon landing (vor 5 Jahren)")
    assert "Zuerst erschienen am 20. Juli 2021, vor 5 Jahren." in moon.content[0].value
    assert "57 Jahre seit dem 20. Juli 1969." in moon.content[0].value
    assert json.loads(built_feeds[feeds.JSON_NAME])["language"] == "de"


def edition_of(config: Config, slug: str) -> tuple[Any, str]:
    calendar = Calendar(load_articles(config.site.content_dir).articles)
    [event] = [e for e in calendar.events_on(DAY) if e.article.slug == slug]
    mailer = Mailer(config, SECRET, clock=lambda: datetime(2026, 7, 20, tzinfo=UTC))
    data = mailer.edition(event).message(READER)
    message = BytesParser(policy=policy.default).parsebytes(data)
    return message, str(message["Subject"])


@pytest.mark.parametrize(("lang", "subject", "line"), [
    ("en", "Moon landing — 5 years ago today", "It marks 57 years since 20 July 1969."),
    ("de", "Moon landing — heute vor 5 Jahren",
     "Seit dem 20. Juli 1969 sind 57 Jahre vergangen."),
    ("az", "Moon landing — 5 il əvvəl bu gün", "20 iyul 1969 tarixindən 57 il keçir."),
    ("ar", "Moon landing — في مثل هذا اليوم قبل 5 سنوات", "مضت 57 سنة على 20 يوليو 1969."),
])
def test_email_subject_and_body_speak_the_language(make_config: Callable[..., Config],
                                                   articles: None, lang: str, subject: str,
                                                   line: str) -> None:
    message, found = edition_of(make_config(language=lang), "moon")
    assert found == subject
    assert message["Content-Language"] == lang
    text = message.get_body(("plain",)).get_content()
    html_part = message.get_body(("html",)).get_content()
    assert line in " ".join(text.split())
    assert line in " ".join(html_part.split())
    document = lxml_html.fromstring(html_part.encode("utf-8"))
    assert document.get("lang") == lang
    assert document.get("dir") == ("rtl" if lang == "ar" else "ltr")


def test_an_arabic_article_s_email_is_arabic_and_right_to_left(
        make_config: Callable[..., Config], articles: None) -> None:
    message, found = edition_of(make_config(language="en"), "hijri")
    assert found == "ذكرى افتتاح الأرشيف — في مثل هذا اليوم قبل 3 سنوات"
    assert message["Content-Language"] == "ar"
    html_part = message.get_body(("html",)).get_content()
    document = lxml_html.fromstring(html_part.encode("utf-8"))
    assert (document.get("lang"), document.get("dir")) == ("ar", "rtl")
    quote = document.find(".//blockquote")
    assert quote is not None and "border-right: 3px" in (quote.get("style") or "")
    assert "border-left" not in (quote.get("style") or "")


def test_the_confirmation_email_speaks_the_site_language(
        make_config: Callable[..., Config]) -> None:
    config = make_config(language="az")
    mailer = Mailer(config, SECRET, clock=lambda: datetime(2026, 7, 20, tzinfo=UTC))
    data = mailer.confirmation(READER, BASE_URL + "confirm/abc")
    message = BytesParser(policy=policy.default).parsebytes(data)
    assert message["Content-Language"] == "az"
    text = message.get_body(("plain",)).get_content()
    assert text.startswith("Hörmətli Nour,")
    assert "Keçid 48 saat ərzində işləyir." in text


def ink_columns(png: bytes, background_tolerance: int = 60) -> tuple[int, int, int]:
    """Return (image width, first column, last column) holding ink: pixels far from the
    background colour, read from the top-left pixel."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("L")
    width, height = image.size
    pixels = image.load()
    assert pixels is not None
    paper = pixels[0, 0]
    columns = [x for x in range(width)
               if any(abs(int(pixels[x, y]) - int(paper)) > background_tolerance  # type: ignore[arg-type]
                      for y in range(height))]
    assert columns, "nothing drawn"
    return width, columns[0], columns[-1]


@pytest.mark.browser
@pytest.mark.parametrize("width", [360, 1024])
def test_right_to_left_pages_render_right_to_left(make_config: Callable[..., Config],
                                                  articles: None, chromium: Browser,
                                                  tmp_path: Path, width: int) -> None:
    out = built(make_config(language="ar"))
    context = chromium.new_context(viewport={"width": width, "height": 900})
    try:
        page = context.new_page()
        for name in ("index.html", "articles/hijri/index.html"):
            page.goto((out / name).as_uri())
            assert page.evaluate("getComputedStyle(document.body).direction") == "rtl"
            # Nothing clipped or pushed sideways: no horizontal scrolling, every box on screen.
            assert page.evaluate("document.documentElement.scrollWidth") <= width, name
            outside = page.evaluate("""width => [...document.querySelectorAll('body *')]
                .filter(e => e.getClientRects().length)
                .map(e => [e.tagName, e.getBoundingClientRect()])
                .filter(([, r]) => r.left < -1 || r.right > width + 1)
                .map(([tag]) => tag)""", width)
            assert outside == [], name
            heading = page.locator("h1")
            shot = heading.screenshot(path=str(tmp_path / f"{width}-{name.replace('/', '-')}.png"))
            box_width, first, last = ink_columns(shot)
            text_width = heading.evaluate("""h => { const r = document.createRange();
                r.selectNodeContents(h); return r.getBoundingClientRect().width; }""")
            assert text_width < box_width - 24, "the test needs a heading shorter than a line"
            # The ink starts at the right edge and leaves the rest of the line empty on the
            # left: the heading reads right to left and is not mirrored back.
            assert last >= box_width - 12, (name, box_width, first, last)
            assert abs(first - (box_width - text_width)) <= 12, (name, box_width, first, last)
        # The appearances run right to left too.
        page.goto((out / "articles/hijri/index.html").as_uri())
        first_year, second_year = page.locator(".history li").all()[:2]
        first_box, second_box = first_year.bounding_box(), second_year.bounding_box()
        assert first_box is not None and second_box is not None
        if first_box["y"] == second_box["y"]:
            assert first_box["x"] > second_box["x"]
        masthead = page.locator(".site-title").bounding_box()
        body = page.locator("body").bounding_box()
        assert masthead is not None and body is not None
        assert masthead["x"] + masthead["width"] > body["x"] + body["width"] - 40
    finally:
        context.close()
