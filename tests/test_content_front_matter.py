"""Front matter is read by libyaml; what YAML refuses is an error naming its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from publisher.content import parse_markdown
from publisher.errors import ContentError


def test_a_character_yaml_refuses_is_a_content_error_with_its_line() -> None:
    # Letters of two bytes before it: the line is counted in characters, not bytes.
    text = f"---\ntitle: {'é' * 20}\nsummary: bell \x07 here\ndate: 2024-01-01\n---\n\nBody.\n"
    with pytest.raises(ContentError) as caught:
        parse_markdown(Path("bell.md"), text)
    assert (caught.value.line, caught.value.field) == (3, "front matter")
    assert "U+0007" in caught.value.message
