"""The hand-off contracts between stages: one module per hand-off, imported by its producer and its consumers.

- `wire`: the OpenAI error envelope, usage and the context-overflow error (serve, gateway → evals, gateway).
- `rundir`: the run directory's layout and readers: checkpoints, metrics and their steady state, the pinned
  model shape, loading weights (train → export, plan `--mfu-from`, demo).
- `routes`: the routing table, one pydantic schema for `routes.toml` (evals `eval routes` → gateway).
- `catalog`: the models, providers, prices and in-house flags a gateway.toml declares (operator → evals).
"""

from autarky.lazy import public

__all__, __getattr__ = public(__name__, {
    "ContextOverflow": "wire",
    "error_envelope": "wire",
    "usage": "wire",
    "Checkpoint": "rundir",
    "complete_checkpoints": "rundir",
    "find_checkpoint": "rundir",
    "is_run_dir": "rundir",
    "load_model_from_run": "rundir",
    "read_metrics": "rundir",
    "read_run_config": "rundir",
    "steady_state": "rundir",
    "Candidate": "routes",
    "RoutingTable": "routes",
    "TaskRoute": "routes",
    "load_routing_table": "routes",
    "write_routing_table": "routes",
    "CatalogEntry": "catalog",
    "CatalogDeployment": "catalog",
    "read_catalog": "catalog",
})
