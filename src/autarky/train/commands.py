"""CLI commands of this stage: thin shells over the package API."""

import typer


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the `autarky` app."""
