"""The eval stage: product task suites, paired statistics, arena ratings, and the routing table the gateway follows.

Python API (autarky.evals.api; the CLI `autarky eval ...` / `autarky arena` is a thin shell over it):
- `evaluate({NAME: URL}, suites=None, limit=None, store_url=None, concurrency=4, in_house=(), prices={NAME:
  "IN:OUT"}, modes={NAME: "chat"|"completions"}, gateway_config=None, max_tokens_cap=None)` → EvalRunSummary
- `print_leaderboard(store_url)`, `routes_from_store(...)`, `write_routes_file(out, ...)`, `write_report(dir, ...)`
- `demo_eval({NAME: URL}, out_dir, in_house=[...], limit=20)`: run, print leaderboard + routes, write both files.
- `leaderboard(engine)`, `compare(engine, a, b, suite)` (McNemar or paired bootstrap), `build_routes(board, ...)`
  (the noise rule of autarky.evals.routes) for programs that hold a store.
Modules: suite (loading/validation), graders + sandbox, client (httpx, retries), runner (concurrency, resume),
results + stats (bootstrap CIs, paired tests), battles + arena (Bradley–Terry as LMArena), routes (the table,
written in the `autarky.contracts.routes` schema), report, generators (`python -m autarky.evals.generators`
rewrites the bundled suites).
"""

from autarky.lazy import public

__all__, __getattr__ = public(__name__, {
    "evaluate": "api",
    "print_leaderboard": "api",
    "routes_from_store": "api",
    "write_routes_file": "api",
    "write_report": "api",
    "demo_eval": "api",
    "EvalModel": "runner",
    "EvalRunSummary": "runner",
    "SuiteScore": "results",
    "leaderboard": "results",
    "compare": "results",
    "build_routes": "routes",
    "write_routes": "routes",
})
