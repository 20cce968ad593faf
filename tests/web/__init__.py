"""Tests of the web service, one file per concern."""
