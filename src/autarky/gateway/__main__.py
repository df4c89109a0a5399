"""`python -m autarky.gateway gateway|keys|audit ...`: this stage's commands without importing the other
stages (faster start for gateway replicas and subprocess tests)."""

import typer

from autarky.gateway.commands import register

# Plain click output, as `autarky`: a UserError is one `Error: ...` line, not a Rich box.
app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None, add_completion=False)
register(app)

if __name__ == "__main__":
    app()
