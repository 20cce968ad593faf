"""What one article may cost is bounded: YAML aliases are refused, fields and files have size
limits, each an error naming file, line and field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from publisher.content import (
    FIELD_LIMITS,
    MAX_ARTICLE_BYTES,
    MAX_TAGS,
    TAG_LENGTH,
    load_article,
)
from publisher.errors import ContentError
from tests.fixtures.content import WriteArticle, WriteFile
from tests.fixtures.ticks import write_config

ROOT = Path(__file__).resolve().parents[1]
MEMORY_LIMIT = 1 << 30  # bytes of address space for the whole build
# Only so that a regression cannot hang the run: the build of four articles takes moments.
BUILD_TIMEOUT = 600


def alias_bomb() -> str:
    """Return 215 KB of front matter that YAML expands to a gigabyte: one 200 KB anchor and a
    list of 5,000 aliases to it."""
    aliases = ", ".join(["*x"] * 5000)
    return (f"---\ntitle: A small file\ndate: 2020-05-01\nsummary: &x {'y' * 200_000}\n"
            f"tags: [{aliases}]\n---\nBody.\n")


def test_an_alias_bomb_is_refused_and_the_others_build_under_a_memory_limit(
        tmp_path: Path, content_dir: Path, write_article: WriteArticle,
        write_file: WriteFile) -> None:
    bomb = write_file("bomb.md", alias_bomb())
    for number in range(1, 4):
        write_article(f"good{number}", date=f"2020-05-0{number}")
    config = write_config(tmp_path / "publisher.toml", {"site": {
        "base_url": "https://example.org/", "content_dir": str(content_dir),
        "output_dir": str(tmp_path / "public")}})
    script = ("import resource, sys\n"
              f"resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_LIMIT}, {MEMORY_LIMIT}))\n"
              "from publisher.cli import main\n"
              "sys.argv[0] = 'publisher'\n"
              "main()\n")
    done = subprocess.run([sys.executable, "-c", script, "--config", str(config), "build",
                           "--date", "2025-05-01"], cwd=ROOT, capture_output=True, text=True,
                          timeout=BUILD_TIMEOUT)
    assert done.returncode == 1, done.stderr
    assert done.stderr == (f"error: {bomb}:5: tags: YAML aliases (*name) are not accepted in "
                           "front matter\n")
    for number in range(1, 4):
        assert (tmp_path / f"public/articles/good{number}/index.html").is_file()


def front(block: str) -> str:
    return f"---\ndate: 2020-05-01\n{block}\n---\nBody.\n"


def over(name: str) -> str:
    return "x" * (FIELD_LIMITS[name] + 1)


# Each field plain and in the forms YAML spells otherwise (an escape in double quotes, a block
# list of quoted items): all are held to the same limits.
OVERSIZED = [
    *[(f"{name}: {over(name)}", name) for name in ("title", "summary", "author", "lang")],
    *[(f'{name}: "{over(name)}\\t"', name) for name in ("title", "summary", "author", "lang")],
    (f"slug: {'s' * (FIELD_LIMITS['slug'] + 1)}", "slug"),
    (f"tags: [{', '.join(['t'] * (MAX_TAGS + 1))}]", "tags"),
    ("tags:\n" + "".join(f'  - "t{n}\\t"\n' for n in range(MAX_TAGS + 1)), "tags"),
    (f"tags: [short, {'t' * (TAG_LENGTH + 1)}]", "tags"),
    (f"tags: ['x\\t', \"{'t' * (TAG_LENGTH + 1)}\\t\"]", "tags"),
    (f"tags: {', '.join(['t'] * (MAX_TAGS + 1))}", "tags"),
]


@pytest.mark.parametrize(("block", "field"), OVERSIZED)
def test_a_field_over_its_limit_names_file_line_and_field(
        write_file: WriteFile, block: str, field: str) -> None:
    text = front(f"title: Fine\n{block}" if field != "title" else block)
    path = write_file("big.md", text)
    with pytest.raises(ContentError) as caught:
        load_article(path)
    error = caught.value
    assert (error.path, error.field) == (path, field)
    assert error.line == (3 if field == "title" else 4)
    assert "allowed" in error.message


def test_fields_at_their_limits_load(write_file: WriteFile) -> None:
    tags = ", ".join(f"t{n}" for n in range(MAX_TAGS - 1))
    text = front("\n".join([f"{name}: {'x' * limit}" for name, limit in FIELD_LIMITS.items()
                            if name != "slug"]
                           + [f"slug: {'s' * FIELD_LIMITS['slug']}",
                              f"tags: [{tags}, {'t' * TAG_LENGTH}]"]))
    article = load_article(write_file("limits.md", text))
    assert len(article.title) == FIELD_LIMITS["title"]
    assert len(article.tags) == MAX_TAGS


@pytest.mark.parametrize("block", [
    "title: &anchor An anchor alone",
    "title: a * b\nsummary: Stars * mark footnotes",
    'title: "a * b\\t"\ntags: ["*", "x\\t"]',
])
def test_stars_and_anchors_without_aliases_load(write_file: WriteFile, block: str) -> None:
    assert load_article(write_file("stars.md", front(block))).title.startswith(("a", "An"))


@pytest.mark.parametrize("block", [
    "title: &t Title\nsummary: *t",
    "title: x\ntags: [&t a, *t]",
    "title: x\nauthor: &a {name: b}\nlang: *a",
    "title: x\ntags: &t [a, *t]",  # an alias inside the node it names
])
def test_any_yaml_alias_is_refused(write_file: WriteFile, block: str) -> None:
    path = write_file("alias.md", front(block))
    with pytest.raises(ContentError, match="aliases") as caught:
        load_article(path)
    assert caught.value.path == path and caught.value.line is not None


def test_a_file_over_the_size_limit_is_refused_unread(write_file: WriteFile) -> None:
    path = write_file("huge.md", front("title: Huge") + "x" * MAX_ARTICLE_BYTES)
    with pytest.raises(ContentError) as caught:
        load_article(path)
    assert (caught.value.path, caught.value.field) == (path, "file")
    assert "1024 KiB" in caught.value.message
