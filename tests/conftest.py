"""Shared fixtures live in tests/fixtures/, one module per stage that provides them."""

import os

# Tests must never reach a hub; everything they load is built here or shipped in a package.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = ["fixtures.data", "fixtures.models", "fixtures.train", "fixtures.servers"]
