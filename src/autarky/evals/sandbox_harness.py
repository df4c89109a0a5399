"""The sandbox's side of autarky.evals.sandbox (copied into the sandbox and run there with `python -I -S`).

argv: mode (script | serve), memory MB, CPU seconds, max processes. It lowers its own rlimits first, so the
limits bind before any untrusted line runs, then either runs main.py as a script or loads it and answers calls
(`serve`): one JSON line in ({"call", "args", "kwargs"}), one JSON line out ({"value"} or {"error"}).
Stdlib only; it must not import autarky.
"""

import json
import os
import resource
import runpy
import socket
import sys


def limit(memory_mb, cpu_s, processes):
    for which, value in ((resource.RLIMIT_AS, memory_mb * 1024 * 1024), (resource.RLIMIT_CPU, cpu_s),
                         (resource.RLIMIT_FSIZE, 16 * 1024 * 1024), (resource.RLIMIT_NOFILE, 64),
                         (resource.RLIMIT_NPROC, processes), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(which, (value, value))


def _denied(*args, **kwargs):
    raise PermissionError("network access is disabled in the autarky sandbox")


def deny_sockets():
    # Belt and braces: the sandbox has no network to reach anything; in opted-in unsandboxed runs this is the
    # only guard.
    for module in (socket, sys.modules.get("_socket")):
        for name in ("socket", "create_connection", "socketpair", "fromfd", "getaddrinfo", "create_server"):
            if module is not None and hasattr(module, name):
                setattr(module, name, _denied)


def encode(value, depth=0):
    if depth > 200:
        raise TypeError("value nested too deeply")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple, set, frozenset)):
        tag = {list: "list", tuple: "tuple", set: "set", frozenset: "frozenset"}.get(type(value))
        if tag is None:
            raise TypeError(type(value).__name__ + " is not plain data")
        return {tag: [encode(v, depth + 1) for v in value]}
    if type(value) is dict:
        return {"dict": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    if isinstance(value, bytes):
        return {"bytes": bytes(value).hex()}
    raise TypeError(type(value).__name__ + " is not plain data")


def decode(value):
    if not isinstance(value, dict):
        return value
    (tag, items), = value.items()
    if tag == "bytes":
        return bytes.fromhex(items)
    if tag == "dict":
        return {decode(k): decode(v) for k, v in items}
    return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[tag](decode(v) for v in items)


def error(exc):
    return {"error": {"type": type(exc).__name__, "message": str(exc)[:2000]}}


def serve():
    # The protocol gets private copies of stdin/stdout; the code's own prints go to stderr.
    requests = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(2, 1)
    sys.stdin = open(os.devnull)
    sys.stdout = sys.stderr

    def reply(message):
        try:
            line = json.dumps(message)
        except (TypeError, ValueError, RecursionError) as exc:
            line = json.dumps(error(exc))
        replies.write(line.encode() + b"\n")
        replies.flush()

    namespace = {"__name__": "solution", "__builtins__": __builtins__}
    try:
        with open("main.py", encoding="utf-8") as f:
            exec(compile(f.read(), "main.py", "exec"), namespace)
    except BaseException as exc:  # noqa: BLE001 - whatever it was, the code did not load
        reply(error(exc))
        return
    reply({"names": [n for n, v in namespace.items() if callable(v) and n.isidentifier() and not n.startswith("__")]})
    for line in requests:
        try:
            request = json.loads(line)
            function = namespace[request["call"]]
            value = function(*decode(request["args"]), **decode(request["kwargs"]))
            reply({"value": encode(value)})
        except BaseException as exc:  # noqa: BLE001 - reported to the tests as the call's exception
            reply(error(exc))


def main():
    mode = sys.argv[1]
    limit(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))  # before any untrusted line
    deny_sockets()
    if mode == "serve":
        serve()
    else:
        sys.argv = ["main.py"]
        runpy.run_path("main.py", run_name="__main__")


if __name__ == "__main__":
    main()
