"""The one exception type that means "the user gave us something we cannot use".

It is a ClickException so that the CLI (and Typer's test runner) print it as one line,
`Error: <message>`, and exit with status 2 without a traceback. Library code raises it for bad input;
the HTTP layers map their own error types to status codes. Anything else escaping is a bug.
"""

import click


class UserError(click.ClickException):
    """Bad input: the message says what is wrong and how to fix it, in one line."""

    exit_code = 2
