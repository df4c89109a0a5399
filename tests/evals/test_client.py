"""The eval client against `autarky serve` (a real tiny model on 127.0.0.1): context overflow read as fields."""

from __future__ import annotations

import asyncio

import pytest

from autarky.evals.client import Client, Endpoint, EndpointError

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("mode", ["chat", "completions"])
def test_context_overflow_reaches_the_client_as_numbers(served_tiny_model, mode):
    endpoint = Endpoint(served_tiny_model.model, served_tiny_model.base_url, mode=mode)

    async def ask() -> EndpointError:
        client = Client(timeout_s=60, retries=0)
        try:
            await client.generate(endpoint, "x", max_tokens=1000)
        except EndpointError as exc:
            return exc
        finally:
            await client.aclose()
        raise AssertionError("a request beyond the context was answered")

    error = asyncio.run(ask())
    assert error.final
    limit, requested = error.context_overflow
    assert limit == 256 and requested > 1000  # the prompt's tokens (template included) plus max_tokens
    assert error.body["error"]["context"]["max_tokens"] == 1000
