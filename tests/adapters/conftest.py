from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """These models are tiny: one intra-op thread is faster than two, and far faster when the cores are busy
    (idle threads spin). Restored afterwards so other stages' tests are unaffected."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
