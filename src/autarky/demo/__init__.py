"""`autarky demo`: the whole loop on the built-in defaults, printing every command it runs.

plan ← data → train → export → sample → serve → gateway → eval → routes → product traffic, outage drill and
self-sufficiency. Each stage runs through the real CLI (so a reader can copy the commands) in the demo workspace
under AUTARKY_HOME, except the run directory, which lives in runs/ like any other.
"""

from autarky.demo.commands import register

__all__ = ["register"]
