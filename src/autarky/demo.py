"""`autarky demo`: the whole loop on the built-in defaults (filled in as stages land)."""

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def demo() -> None:
        """Run the main job end to end on the built-in defaults."""
