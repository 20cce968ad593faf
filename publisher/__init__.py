"""Republish dated articles on their anniversaries, to feeds, a web archive and email."""

__version__ = "0.1.0"
