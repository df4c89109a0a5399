import pytest


@pytest.fixture(autouse=True)
def _tiny_models_on_one_thread(one_thread: None) -> None:
    """Every test here runs tiny models: see `one_thread` in fixtures/models.py."""
