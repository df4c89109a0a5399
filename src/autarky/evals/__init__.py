"""The eval stage: product task suites, paired statistics, arena ratings, and the routing table the gateway follows.

Python API (autarky.evals.api; the CLI `autarky eval ...` / `autarky arena` is a thin shell over it):
- `evaluate({NAME: URL}, suites=None, limit=None, store_url=None, concurrency=4, in_house=(), prices={NAME:
  "IN:OUT"}, modes={NAME: "chat"|"completions"}, gateway_config=None, max_tokens_cap=None)` → EvalRunSummary
- `print_leaderboard(store_url)`, `routes_from_store(...)`, `write_routes_file(out, ...)`, `write_report(dir, ...)`
- `demo_eval({NAME: URL}, out_dir, in_house=[...], limit=20)`: run, print leaderboard + routes, write both files.
Modules: suite (loading/validation), graders + sandbox, client (httpx, retries), runner (concurrency, resume),
results + stats (bootstrap CIs, paired tests), battles + arena (Bradley–Terry as LMArena), routes, report,
generators (`python -m autarky.evals.generators` rewrites the bundled suites).
"""
