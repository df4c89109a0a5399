"""Bundled evaluation suites (one folder each)."""
