"""Fixtures of the eval tests: a scripted OpenAI-compatible server (see stub_openai.py) and a throwaway store."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from evals.stub_openai import Script, StubServer, start_stub


@pytest.fixture
def stub_server() -> Iterator[Callable[..., StubServer]]:
    started: list[StubServer] = []

    def make(script: Script, model: str = "stub-model") -> StubServer:
        stub = start_stub(script, model)
        started.append(stub)
        return stub

    yield make
    for stub in started:
        stub.stop()


@pytest.fixture
def store_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'eval.db'}"
