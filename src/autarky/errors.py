"""The one exception type that means "the user gave us something we cannot use".

It is a ClickException so that the CLI (and Typer's test runner) print it as one line,
`Error: <message>`, and exit with status 2 without a traceback. Library code raises it for bad input;
the HTTP layers map their own error types to status codes. Anything else escaping is a bug.
"""

import click

try:  # Typer ≥ 0.26 vendors click and only catches its own ClickException; be both.
    from typer._click.exceptions import ClickException as _TyperClickException
except ImportError:  # pragma: no cover - older Typer uses click itself
    _BASES: tuple[type, ...] = (click.ClickException,)
else:
    _BASES = (_TyperClickException, click.ClickException)


class UserError(*_BASES):  # type: ignore[misc]
    """Bad input: the message says what is wrong and how to fix it, in one line."""

    exit_code = 2

    def show(self, file=None) -> None:  # noqa: ANN001 - click's signature
        # One plain line, not Typer's Rich box: scripts and the tests read it.
        click.echo(f"Error: {self.format_message()}", file=file, err=True)
