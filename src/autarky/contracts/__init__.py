"""The hand-off contracts between stages: one module per hand-off, imported by its producer and its consumers.

- `wire`: the OpenAI error envelope, usage and the context-overflow error (serve, gateway → evals, gateway).
"""
