"""Front matter read without libyaml gives exactly what YAML gives, or is left to libyaml."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from publisher.content import parse_markdown, simple_front_matter, yaml_front_matter
from publisher.errors import ContentError

# Blocks the simple reader takes: each must come out as YAML reads it.
SIMPLE = [
    "",
    "title: Article 12 about the canal\ndate: 2013-05-04\ntags: [bridge]",
    "title: 'Quoted: with a colon'\ndate: 2020-01-01",
    "title: 'It''s quoted'\ndate: \"2020-01-01\"",
    'title: "Double # quoted, with [brackets]"',
    "title: Don't stop \"here\"",
    "title: A, b [c] {d} e!",
    "title: Ünïcödé · title … 😀",
    "title:    spaced out   \nsummary: trailing   ",
    "title: a&b*c!\nauthor: a@b%c`d|e>f",
    "recurring: false\nlang: yes\nauthor: No\nsummary: ON",
    "summary: ~\nauthor: null\nlang: Null\nslug: NULL",
    "summary:\ntitle: x",
    "tags: []\ntitle: x",
    "tags: [ a , b c, 'd', \"f\" ]",
    "tags: [yes, off, x]",
    "tags:\n  - one\n  - two words\n  - 'three: quoted'\ntitle: x",
    "tags:\n- indentless\n- list",
    "# a comment\ntitle: x\n\n# another\ndate: 2020-01-01\n",
    "title: first\ntitle: second",
    "title: y\nn: n\nY: N",
    "title: 2020-01-01\ndate: 20-01-01",
    "title: .hidden\nsummary: +plus",
    "title: x=y\nsummary: <b>html</b> & more",
]

# Blocks the simple reader must leave to libyaml (whatever libyaml then makes of them).
NOT_SIMPLE = [
    "title: Apollo 11: the landing",
    "title: 1984",
    "title: 1_000\ndate: 2020-01-01",
    "date: 2020-01-01 10:00:00",
    "title: 0x1F",
    "title: .5",
    "title: .inf",
    "title: a #comment",
    "title: C#",
    "tags: ['a, b']",
    "author: -",
    'title: "escaped \\" quote"',
    'title: "tab \\t escape"',
    "title: 'unclosed",
    "title: 'closed' trailing",
    "title: |\n  block scalar",
    "title: >\n  folded",
    "title: first line\n  continued",
    "title: &anchor x\nsummary: *anchor",
    "title: !!str 12",
    "yes: key that YAML reads as true",
    "null: key",
    "123: number key",
    "'quoted key': x",
    "  title: indented document",
    "title:\tx",
    "title: a\tb",
    "title: ctrl \x01 character",
    "title: next line \x85 character",
    "title: line \u2028 separator",
    "title: bom \ufeff inside",
    "tags: [a, [nested]]",
    "tags: [a, b,]",
    "tags: [1, 2]",
    "tags: [a: b]",
    "tags: {a: b}",
    "tags:\n  - a\n   - b",
    "tags:\n  - a\n  -",
    "tags:\n  - [a]",
    "tags:\n\n  - a",
    "- a\n- b",
    "just text",
    "%YAML 1.1\n---\ntitle: x",
    "title: -leading dash",
    "title: ?question",
    "title: :colon",
    "title: @at",
    "title: `tick",
    "title: %percent",
    "<<: {title: x}",
]


def yaml_reading(block: str) -> object:
    """Return what libyaml makes of a block: fields and lines, or the error's text."""
    try:
        return yaml_front_matter(Path("article.md"), block)
    except ContentError as exc:
        return f"error: {exc}"


def same(fast: tuple[dict[str, object], dict[str, int]], slow: object) -> bool:
    """Return whether two readings are equal, down to the type of every value."""
    if not isinstance(slow, tuple) or fast != slow:
        return False
    return all(type(fast[0][key]) is type(slow[0][key]) for key in fast[0])


@pytest.mark.parametrize("block", SIMPLE)
def test_simple_front_matter_reads_as_yaml_does(block: str) -> None:
    fast = simple_front_matter(block)
    assert fast is not None
    assert same(fast, yaml_reading(block)), (fast, yaml_reading(block))


@pytest.mark.parametrize("block", NOT_SIMPLE)
def test_anything_else_is_left_to_libyaml(block: str) -> None:
    assert simple_front_matter(block) is None


ATOMS = [
    "title", "yes", "no", "on", "off", "null", "~", "Null", "true", "False", "TRUE", "y", "n",
    "1", "1.0", "1e3", "+1", "-1", "0x1F", "0o7", "1_000", "1:20", ".5", ".inf", ".NaN",
    "2020-01-01", "2020-01-01 10:00:00", "=", "<<", "-", "?", ":", "#", " #", "'", '"', "''",
    "\\", ",", "[", "]", "{", "}", "&a", "*a", "!t", "|", ">", "%", "@", "`", "a", "b c", "é",
    "·", "😀", "\t", "\x01", "\x85", "\u2028", "\ufeff", "\ufffd", " ", "  ", "x: y", "x:y",
    "a#b", "[a]", "[a, b]", "[]", "[ ]", "[a,]", "['a', \"b\"]", "[yes, no]", "[1, 2]",
]


def random_block(rng: random.Random) -> str:
    """Return a few lines made of pieces YAML reads in many different ways."""

    def value() -> str:
        return "".join(rng.choice(ATOMS) for _ in range(rng.randint(0, 3)))

    lines = []
    for _ in range(rng.randint(0, 5)):
        key = rng.choice(["title", "date", "tags", "summary", "_x", "yes", "null", "k1", "on"])
        kind = rng.random()
        if kind < 0.5:
            lines.append(f"{key}:{rng.choice([' ', '  ', '', chr(9)])}{value()}"
                         f"{rng.choice(['', ' '])}")
        elif kind < 0.65:
            lines.append(f"{rng.choice(['', ' ', '  '])}-{rng.choice([' ', '  ', ''])}{value()}")
        elif kind < 0.7:
            lines.append("#" + value())
        elif kind < 0.75:
            lines.append(rng.choice(["", " "]))
        else:
            quote = rng.choice(["'", '"'])
            lines.append(f"{key}: {quote}{value()}{quote}")
    return "\n".join(lines) + rng.choice(["", "\n"])


def test_random_front_matter_reads_as_yaml_does_or_goes_to_libyaml() -> None:
    rng = random.Random(20260720)
    taken = 0
    for _ in range(4000):
        block = random_block(rng)
        fast = simple_front_matter(block)
        if fast is not None:
            taken += 1
            assert same(fast, yaml_reading(block)), (block, fast, yaml_reading(block))
    assert taken > 500  # the comparison covered many blocks the simple reader took


def test_a_character_yaml_refuses_is_a_content_error_with_its_line() -> None:
    # Letters of two bytes before it: the line is counted in characters, not bytes.
    text = f"---\ntitle: {'é' * 20}\nsummary: bell \x07 here\ndate: 2024-01-01\n---\n\nBody.\n"
    with pytest.raises(ContentError) as caught:
        parse_markdown(Path("bell.md"), text)
    assert (caught.value.line, caught.value.field) == (3, "front matter")
    assert "U+0007" in caught.value.message
