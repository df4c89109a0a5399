"""Where autarky keeps its state: AUTARKY_HOME (default ./.autarky) and nothing else."""

import os
from pathlib import Path


def autarky_home() -> Path:
    """The folder for caches, the store and imported models; created on first use."""
    home = Path(os.environ.get("AUTARKY_HOME", ".autarky")).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home


def default_store_url() -> str:
    return f"sqlite:///{autarky_home() / 'autarky.db'}"
