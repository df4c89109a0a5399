"""`autarky demo`: the whole loop on the built-in defaults, printing every command it runs.

plan ← data → train → export → sample → serve → gateway → eval → routes → product traffic, outage drill and
self-sufficiency. Each stage runs through the real CLI (so a reader can copy the commands) in the demo workspace
under AUTARKY_HOME, except the run directory, which lives in runs/ like any other. `register(app)` adds the
command to the CLI.
"""

from autarky.lazy import public

__all__, __getattr__ = public(__name__, {
    "register": "commands",
})
