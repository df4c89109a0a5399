"""The gateway's modules form no import circle: nothing imports back from the app (only the modules that run
it may), no module imports another that imports it back (lazy imports count), and the gateway never imports
the demo."""

import ast
from pathlib import Path

import autarky.gateway

PACKAGE = Path(autarky.gateway.__file__).parent
RUNNERS = {"server", "commands"}  # they run the app, so they import it


def imported(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside functions (lazy imports count)."""
    names: set[str] = set()
    package = "autarky.gateway" + ("." + path.parent.name if path.parent != PACKAGE else "")
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        out[".".join(["autarky.gateway", *parts])] = path
    return out


def test_only_the_runners_import_the_app():
    offenders = {name for name, path in modules().items()
                 if "autarky.gateway.app" in imported(path) and name.rsplit(".", 1)[-1] not in RUNNERS}
    assert offenders == set()


def test_the_gateway_never_imports_the_demo():
    offenders = {name for name, path in modules().items()
                 if any(m == "autarky.demo" or m.startswith("autarky.demo.") for m in imported(path))}
    assert offenders == set()


def test_no_import_circle_inside_the_gateway():
    """Module -> the gateway modules it names (`from a.b import c` names a.b, and a.b.c if c is a module)."""
    mods = modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        targets = set()
        for m in imported(path):
            parts = m.split(".")
            named = [".".join(parts[:i]) for i in range(len(parts), 2, -1) if ".".join(parts[:i]) in mods]
            targets.update(named[:1])  # the module itself, not the packages above it
        graph[name] = targets - {name}

    def cycle_from(node: str, trail: list[str]) -> list[str] | None:
        if node in trail:
            return trail[trail.index(node):] + [node]
        for nxt in sorted(graph[node]):
            found = cycle_from(nxt, trail + [node])
            if found:
                return found
        return None

    cycles = [c for c in (cycle_from(n, []) for n in graph) if c]
    assert not cycles, " -> ".join(cycles[0])
