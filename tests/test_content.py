"""Loading articles of both forms, reporting bad input, caching, and converting plain files."""

from __future__ import annotations

import html
import re
import shutil
from datetime import date
from pathlib import Path

import pytest

from publisher import content
from publisher.content import ArticleCache, load_article, load_articles
from publisher.errors import ContentError, DuplicateSlugError
from tests.fixtures.content import WriteArticle, WriteFile


def visible_text(fragment: str) -> str:
    """Return the text a reader sees in an HTML fragment, whitespace normalised."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


def test_markdown_article_reads_every_field(write_article: WriteArticle) -> None:
    path = write_article(
        "metre", "Signed in *Paris*.\n\nSecond paragraph.",
        title="The metre", date="2022-05-23", anniversary="1875-05-20",
        summary="A treaty.", tags=["measurement", "science"], author="Desk", lang="fr",
        slug="metre-convention",
    )
    article = load_article(path)
    assert article.slug == "metre-convention"
    assert article.title == "The metre"
    assert article.date == date(2022, 5, 23)
    assert article.anniversary == (5, 20)
    assert article.commemorated == date(1875, 5, 20)
    assert article.month_day == "05-20"
    assert article.summary == "A treaty."
    assert article.tags == ("measurement", "science")
    assert (article.author, article.lang, article.recurring) == ("Desk", "fr", True)
    assert "<em>Paris</em>" in article.body_html
    assert article.source == path


def test_markdown_defaults_slug_summary_and_anniversary(write_article: WriteArticle) -> None:
    article = load_article(write_article("Leap Day", "First *words* here.\n\nMore.",
                                         date="2024-02-29", recurring=False))
    assert article.slug == "leap-day"
    assert article.anniversary == (2, 29)
    assert article.commemorated is None
    assert article.summary == "First words here."
    assert article.recurring is False


def test_month_day_anniversary(write_article: WriteArticle) -> None:
    article = load_article(write_article("x", date="2022-05-23", anniversary="05-20"))
    assert (article.anniversary, article.commemorated) == ((5, 20), None)


def test_plain_article_derives_title_and_escapes_paragraphs(write_file: WriteFile) -> None:
    path = write_file("tides.txt", "\n  date 2021-06-21 The tide <turns> & rises. Then it falls\n"
                                   "again.\n\n  Second   paragraph.\n")
    article = load_article(path)
    assert article.date == date(2021, 6, 21)
    assert article.slug == "tides"
    assert article.title == "The tide <turns> & rises"
    assert article.body_html == ("<p>The tide &lt;turns&gt; &amp; rises. Then it falls again.</p>\n"
                                 "<p>Second paragraph.</p>\n")
    assert article.body_text == ("The tide <turns> & rises. Then it falls again.\n\n"
                                 "Second paragraph.")


def test_long_first_sentence_is_cut_at_a_word(write_file: WriteFile) -> None:
    words = " ".join(f"word{i}" for i in range(40))
    article = load_article(write_file("long.txt", f"date 2020-01-01 {words}"))
    assert len(article.title) <= content.TITLE_LENGTH
    assert article.title.endswith("…")
    assert words.startswith(article.title[:-1])


def test_seed_article_loads_unchanged(seed_path: Path) -> None:
    raw = seed_path.read_text(encoding="utf-8")
    article = load_article(seed_path)
    head = re.match(r"\s*date\s+(\S+)\s+", raw)
    assert head is not None
    assert article.date.isoformat() == head.group(1)
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", raw[head.end():]) if p.strip()]
    assert article.body_text.split("\n\n") == paragraphs
    assert visible_text(article.body_html) == " ".join(paragraphs)
    # The title is the first sentence of the first paragraph, without its full stop.
    assert paragraphs[0].startswith(article.title)
    assert paragraphs[0][len(article.title)] == "."
    assert 0 < len(article.title) <= content.TITLE_LENGTH


def test_seed_loads_from_its_folder_with_no_errors(seed_path: Path) -> None:
    result = load_articles(seed_path.parent)
    assert [a.source for a in result.articles] == [seed_path]
    assert result.errors == []


BAD_INPUTS = [
    ("bad-yaml.md", "---\ntitle: x\ndate: [2024-01-01\n---\nbody\n", 4, "front matter",
     "invalid YAML"),
    ("no-date.md", "---\ntitle: Dateless\n---\nbody\n", 1, "date", "missing"),
    ("impossible.md", "---\ntitle: x\ndate: 2023-02-30\n---\nbody\n", 3, "date",
     "impossible date '2023-02-30'"),
    ("no-title.md", "---\ndate: 2024-01-01\n---\nbody\n", 1, "title", "missing"),
    ("unknown.md", "---\ntitle: x\ndate: 2024-01-01\ncolour: red\n---\nbody\n", 4, "colour",
     "unknown field"),
    ("bad-slug.md", "---\ntitle: x\ndate: 2024-01-01\nslug: Has Spaces\n---\n", 4, "slug",
     "slug must match"),
    ("bad-anniversary.md", "---\ntitle: x\ndate: 2024-01-01\nanniversary: 02-30\n---\n", 4,
     "anniversary", "impossible month-day"),
    ("bad-recurring.md", "---\ntitle: x\ndate: 2024-01-01\nrecurring: sometimes\n---\n", 4,
     "recurring", "true or false"),
    ("no-front-matter.md", "Just text.\n", 1, "front matter", "expected YAML front matter"),
    ("plain-no-date.txt", "Once upon a time.\n", 1, "date", "start with 'date YYYY-MM-DD'"),
    ("plain-impossible.txt", "\n\ndate 2023-13-01 Text.\n", 3, "date", "impossible date"),
    ("plain-empty.txt", "date 2023-01-01   \n\n", 1, "body", "no text"),
]


@pytest.mark.parametrize(("name", "text", "line", "field", "fragment"), BAD_INPUTS)
def test_bad_input_names_file_line_and_field(
    write_file: WriteFile, name: str, text: str, line: int, field: str, fragment: str
) -> None:
    path = write_file(name, text)
    with pytest.raises(ContentError) as caught:
        load_article(path)
    assert (caught.value.path, caught.value.line, caught.value.field) == (path, line, field)
    assert fragment in caught.value.message
    assert str(caught.value).startswith(f"{path}:{line}: {field}: ")


def test_non_utf8_file_names_the_line_of_the_bad_byte(write_file: WriteFile) -> None:
    path = write_file("latin1.md", "---\ntitle: x\ndate: 2024-01-01\n---\n\nCaf\xe9\n".encode(
        "latin-1"))
    with pytest.raises(ContentError) as caught:
        load_article(path)
    assert (caught.value.line, caught.value.field) == (6, "encoding")
    assert "0xe9" in caught.value.message


def test_one_broken_article_does_not_stop_the_others(
    write_article: WriteArticle, write_file: WriteFile, content_dir: Path
) -> None:
    write_article("good", date="2024-01-01")
    write_file("broken.md", "---\ntitle: x\ndate: 2023-02-30\n---\n")
    write_file("nested/also-good.txt", "date 2020-05-05 Nested text.")
    result = load_articles(content_dir)
    assert sorted(a.slug for a in result.articles) == ["also-good", "good"]
    assert [e.path for e in result.errors] == [content_dir / "broken.md"]


def test_duplicate_slug_keeps_the_first_and_names_both(
    write_article: WriteArticle, write_file: WriteFile, content_dir: Path
) -> None:
    first = write_article("moon", date="2021-07-20")
    second = write_file("moon.txt", "date 2022-07-20 Another moon text.")
    result = load_articles(content_dir)
    assert [a.source for a in result.articles] == [first]
    [error] = result.errors
    assert isinstance(error, DuplicateSlugError)
    assert (error.path, error.field) == (second, "slug")
    assert str(first) in error.message


def test_hidden_and_other_files_are_skipped(
    write_article: WriteArticle, write_file: WriteFile, content_dir: Path
) -> None:
    write_article("shown", date="2024-01-01")
    write_file(".draft.md", "not even front matter")
    write_file(".git/notes.md", "nope")
    write_file("notes.rst", "not an article")
    write_file("old.txt.imported", "date 2020-01-01 Converted earlier.")
    assert [a.slug for a in load_articles(content_dir).articles] == ["shown"]


def test_missing_content_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ContentError, match="does not exist"):
        load_articles(tmp_path / "absent")


def test_cache_reuses_unchanged_files_and_rereads_changed_ones(
    write_article: WriteArticle, content_dir: Path
) -> None:
    path = write_article("cached", "Old body.", date="2024-01-01")
    cache = ArticleCache()
    first = load_articles(content_dir, cache).articles[0]
    assert load_articles(content_dir, cache).articles[0] is first
    write_article("cached", "A new, longer body.", date="2024-01-01")
    changed = load_articles(content_dir, cache).articles[0]
    assert changed is not first
    assert "A new, longer body." in changed.body_html
    path.unlink()
    assert load_articles(content_dir, cache).articles == []


def test_loading_from_listed_stamps_gives_the_same_result(
    write_article: WriteArticle, write_file: WriteFile, content_dir: Path
) -> None:
    write_article("moon", date="2021-07-20")
    write_file("moon.txt", "date 2022-07-20 Another moon text.")
    write_file("broken.md", "---\ntitle: x\n---\n")
    write_file("nested/pi.txt", "date 2020-03-14 Pi.")
    listed = load_articles(content_dir, ArticleCache(), stamps=content.content_stamps(content_dir))
    walked = load_articles(content_dir, ArticleCache())
    assert listed.articles == walked.articles
    assert [str(e) for e in listed.errors] == [str(e) for e in walked.errors]


def test_cache_remembers_errors_too(write_file: WriteFile, content_dir: Path) -> None:
    write_file("bad.md", "---\ntitle: x\n---\n")
    cache = ArticleCache()
    first = load_articles(content_dir, cache).errors
    again = load_articles(content_dir, cache).errors
    assert len(first) == 1
    assert again[0] is first[0]


PLAIN_TRICKS = (
    "date 2020-02-02 # Not a heading, *not emphasis*, [not a link](x) and AT&amp;T.\n\n"
    "1. Not a list item, <b>not bold</b>, `not code`.\n\n"
    "- Nor this & that; &copy; stays literal.\n\n"
    "> No quote either \\ and a backslash.\n"
)


def test_import_keeps_text_title_date_and_slug(write_file: WriteFile, content_dir: Path) -> None:
    source = write_file("tricks.txt", PLAIN_TRICKS)
    plain = load_article(source)
    target, retired = content.import_plain(source)
    assert target == content_dir / "tricks.md"
    assert retired == content_dir / "tricks.txt.imported"
    assert not source.exists()
    assert retired.read_text(encoding="utf-8") == PLAIN_TRICKS
    converted = load_article(target)
    assert (converted.slug, converted.title, converted.date) == (plain.slug, plain.title,
                                                                 plain.date)
    assert visible_text(converted.body_html) == visible_text(plain.body_html)
    assert "<b>" not in converted.body_html
    assert [a.slug for a in load_articles(content_dir).articles] == ["tricks"]


def test_import_of_the_seed_round_trips(seed_path: Path, tmp_path: Path) -> None:
    copy = tmp_path / seed_path.name
    shutil.copyfile(seed_path, copy)
    plain = load_article(copy)
    target, _ = content.import_plain(copy, tmp_path / "out")
    converted = load_article(target)
    assert (converted.title, converted.date, converted.slug) == (plain.title, plain.date,
                                                                 plain.slug)
    assert visible_text(converted.body_html) == visible_text(plain.body_html)


def test_import_refuses_to_overwrite_without_force(write_file: WriteFile) -> None:
    source = write_file("twice.txt", "date 2020-01-01 First text.")
    existing = write_file("twice.md", "hand-edited")
    with pytest.raises(ContentError, match="already exists") as caught:
        content.import_plain(source)
    assert caught.value.path == source
    assert existing.read_text(encoding="utf-8") == "hand-edited"
    assert source.exists()
    content.import_plain(source, force=True)
    assert load_article(existing).title == "First text"


def test_import_can_keep_the_source_and_write_elsewhere(write_file: WriteFile,
                                                        tmp_path: Path) -> None:
    source = write_file("kept.txt", "date 2020-01-01 Kept text.")
    target, retired = content.import_plain(source, tmp_path / "converted", keep_source=True)
    assert (target, retired) == (tmp_path / "converted" / "kept.md", None)
    assert source.exists()


def test_import_rejects_markdown_and_broken_plain_files(write_file: WriteFile,
                                                        write_article: WriteArticle) -> None:
    with pytest.raises(ContentError, match=r"only plain \.txt"):
        content.import_plain(write_article("already", date="2020-01-01"))
    broken = write_file("broken.txt", "date 2023-02-30 Never happened.")
    with pytest.raises(ContentError, match="impossible date"):
        content.import_plain(broken)
    assert not broken.with_suffix(".md").exists()


COMMONMARK_SAMPLES = [
    "# Heading\n\nA *paragraph* with `code`, **strong** text and a [link](https://example.org/).",
    "- one\n- two\n  - nested\n\n1. first\n2) second",
    "> a quote\n> over two lines\n\n    indented code\n\n```python\nfenced = True\n```",
    "Hard  \nbreak, an ![image](pic.png \"title\"), <span>inline html</span> & entities &copy;",
    "<div>\nblock html\n</div>\n\n***\n\nSetext\n======\n\n[ref]: https://example.org/r",
    "Escapes \\* \\_ and autolink <https://example.org/a?b=c&d> and tabs\tinside.",
]


@pytest.mark.parametrize("text", COMMONMARK_SAMPLES)
def test_markdown_matches_the_reference_renderer(text: str) -> None:
    # The Rust port is used for speed; markdown-it-py is the reference its HTML must equal.
    reference = pytest.importorskip("markdown_it").MarkdownIt("commonmark")
    assert content.render_markdown(text) == reference.render(text)


def test_sample_markdown_matches_the_reference_renderer() -> None:
    reference = pytest.importorskip("markdown_it").MarkdownIt("commonmark")
    samples = sorted((Path(__file__).resolve().parents[1] / "content").glob("*.md"))
    assert samples
    for path in samples:
        body = path.read_text(encoding="utf-8").split("---\n", 2)[2]
        assert content.render_markdown(body) == reference.render(body), path.name
