"""Loading and validating publisher.toml: defaults, relative paths, errors naming the key."""

from __future__ import annotations

import pickle
import tomllib
from datetime import time
from email.utils import parseaddr
from pathlib import Path

import pytest

from publisher import config
from publisher.errors import ConfigError


def write_config(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / config.CONFIG_NAME
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_apply_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    site = config.load().site
    assert site.base_url == "http://127.0.0.1:8000/"
    assert site.timezone == "UTC"
    assert site.publish_time == time(9, 0)
    assert site.leap_day == "feb28"
    assert site.feed_items == 50
    assert site.language == "en"
    assert site.content_dir == tmp_path / "content"
    assert site.output_dir == tmp_path / "var" / "site"
    assert site.templates_dir is None


def test_publisher_toml_in_the_working_directory_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(tmp_path, '[site]\ntitle = "Found"\n')
    monkeypatch.chdir(tmp_path)
    loaded = config.load()
    assert loaded.site.title == "Found"
    assert loaded.path == tmp_path / config.CONFIG_NAME


def test_relative_paths_resolve_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(tmp_path / "etc", (
        "[site]\n"
        'content_dir = "articles"\n'
        'output_dir = "../www/site"\n'
        'templates_dir = "look"\n'
    ))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    site = config.load(path).site
    assert site.content_dir == tmp_path / "etc" / "articles"
    assert site.output_dir == tmp_path / "etc" / "../www/site"
    assert site.templates_dir == tmp_path / "etc" / "look"


def test_absolute_paths_are_kept(tmp_path: Path) -> None:
    target = tmp_path / "absolute" / "out"
    path = write_config(tmp_path, f'[site]\noutput_dir = "{target}"\n')
    assert config.load(path).site.output_dir == target


def test_site_urls_derive_from_base_url(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[site]\nbase_url = "https://Example.org/blog"\n')
    site = config.load(path).site
    assert site.base_url == "https://Example.org/blog/"
    assert site.domain == "example.org"
    assert site.url("feed.xml") == "https://Example.org/blog/feed.xml"
    assert site.url("/feed.xml") == "https://Example.org/blog/feed.xml"
    assert site.article_url("moon") == "https://Example.org/blog/articles/moon/"


def test_site_values_are_read(tmp_path: Path) -> None:
    path = write_config(tmp_path, (
        "[site]\n"
        'timezone = "America/New_York"\n'
        'publish_time = "07:30"\n'
        'leap_day = "skip"\n'
        "feed_items = 7\n"
        'language = "fr"\n'
    ))
    site = config.load(path).site
    assert (site.timezone, site.zone.key) == ("America/New_York", "America/New_York")
    assert site.publish_time == time(7, 30)
    assert (site.leap_day, site.feed_items, site.language) == ("skip", 7, "fr")


@pytest.mark.parametrize(("body", "field", "fragment"), [
    ('base_url = "example.org"', "site.base_url", "absolute http(s) URL"),
    ('base_url = "ftp://example.org/"', "site.base_url", "absolute http(s) URL"),
    ('timezone = "Mars/Olympus_Mons"', "site.timezone", "unknown IANA time zone"),
    ('publish_time = "9am"', "site.publish_time", "HH:MM"),
    ('publish_time = "24:00"', "site.publish_time", "HH:MM"),
    ('leap_day = "feb29"', "site.leap_day", "feb28, mar1, skip"),
    ("feed_items = 0", "site.feed_items", "at least 1"),
    ('feed_items = "ten"', "site.feed_items", "expected int"),
    ("title = 5", "site.title", "expected str"),
    ('colour = "red"', "site.colour", "unknown key"),
])
def test_invalid_site_values_name_the_key(tmp_path: Path, body: str, field: str,
                                          fragment: str) -> None:
    path = write_config(tmp_path, f"[site]\n{body}\n")
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert caught.value.field == field
    assert caught.value.path == path
    assert fragment in caught.value.message
    assert str(path) in str(caught.value)


def test_unknown_table_is_rejected(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[sites]\ntitle = "typo"\n')
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert caught.value.field == "sites"


def test_a_value_where_a_table_belongs_names_the_table(tmp_path: Path) -> None:
    path = write_config(tmp_path, 'site = "typo"\n')
    with pytest.raises(ConfigError, match="expected a table") as caught:
        config.load(path)
    assert caught.value.field == "site"


def test_a_config_error_pickles_whole() -> None:
    # Errors cross process boundaries (a pool's workers) with every field they name.
    error = ConfigError("must be at least 1", path="/etc/publisher.toml", line=4, field="web.port")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is ConfigError and str(copy) == str(error)
    assert (copy.message, copy.path, copy.line, copy.field) == (
        error.message, error.path, error.line, error.field)


def test_invalid_toml_names_the_line(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[site]\ntitle = "ok"\nbase_url = \n')
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert caught.value.line == 3
    assert f"{path}:3:" in str(caught.value)


def test_non_utf8_config_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / config.CONFIG_NAME
    path.write_bytes(b'[site]\ntitle = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        config.load(path)


def test_missing_named_config_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(tmp_path / "absent.toml")


def test_default_sender_quotes_a_title_with_specials(tmp_path: Path) -> None:
    loaded = config.from_mapping({"site": {"title": "Notes <& more>, weekly",
                                           "base_url": "https://example.org/"}},
                                 base_dir=tmp_path)
    assert parseaddr(loaded.email.sender) == ("Notes <& more>, weekly", "publisher@example.org")


def test_example_config_lists_every_key_with_its_default(monkeypatch: pytest.MonkeyPatch) -> None:
    # The example documents the configuration: it must load, name every key the loader reads,
    # and give the built-in default for each value not marked "example".
    example = Path(__file__).resolve().parents[1] / "publisher.example.toml"
    loaded = config.load(example)
    document = tomllib.loads(example.read_text(encoding="utf-8"))
    read: set[tuple[str, str]] = set()
    original_get = config._Table.get

    def recording_get(self: config._Table, key: str, kind: type, default: object) -> object:
        read.add((self.name, key))
        return original_get(self, key, kind, default)

    monkeypatch.setattr(config._Table, "get", recording_get)
    defaults = config.from_mapping({"email": {"dkim": {}}}, base_dir=example.parent)
    for table, key in sorted(read):
        section: object = document
        for part in table.split("."):
            section = section[part]  # type: ignore[index]
        assert key in section, f"{table}.{key} is missing from {example.name}"  # type: ignore[operator]
    assert loaded.state == defaults.state
    assert loaded.schedule == defaults.schedule
    assert loaded.email.dkim == defaults.email.dkim
    assert loaded.site.publish_time == defaults.site.publish_time
    assert loaded.email.smtp.port == defaults.email.smtp.port
