"""The forward pass: the vocabulary head where asked equals the full logits there; GQA sharing changes nothing."""

import pytest
import torch

from autarky.model.generate import StaticKVCache
from autarky.model.llama import Attention, Llama
from autarky.model.sizes import preset


@pytest.fixture(scope="module")
def model() -> Llama:
    llama = Llama(preset("nano", vocab_size=300))  # nano has fewer key/value heads than query heads
    llama.init_weights(seed=0)
    return llama.eval()


def test_logits_at_equal_the_full_logits_at_those_positions(model) -> None:
    tokens = torch.randint(0, 300, (3, 11), generator=torch.Generator().manual_seed(1))
    at = [10, 0, 6]
    with torch.no_grad():
        full = model(tokens)  # (B, T, V)
        picked = model(tokens, logits_at=at)  # (B, V)
        as_tensor = model(tokens, logits_at=torch.tensor(at))
    assert full.shape == (3, 11, 300) and picked.shape == (3, 300)
    torch.testing.assert_close(picked, full[torch.arange(3), torch.tensor(at)], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(as_tensor, picked, rtol=0, atol=0)


def test_logits_at_of_a_one_token_step_over_a_cache(model) -> None:
    tokens = torch.randint(0, 300, (2, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(tokens)
        cache = StaticKVCache(model, batch_size=2, max_len=9)
        model(tokens[:, :8], cache=cache)
        step = model(tokens[:, 8:], torch.tensor([8]), cache, logits_at=[0, 0])  # (B, V)
    torch.testing.assert_close(step, full[:, 8], rtol=1e-5, atol=1e-5)


def test_sharing_key_value_heads_gives_the_same_logits(model) -> None:
    assert model.config.n_kv_heads < model.config.n_heads
    tokens = torch.randint(0, 300, (2, 7), generator=torch.Generator().manual_seed(3))
    attentions = [m for m in model.modules() if isinstance(m, Attention)]
    with torch.no_grad():
        repeated = model(tokens)
        try:
            for attention in attentions:
                attention.share_kv_heads = True
            shared = model(tokens)
        finally:
            for attention in attentions:
                del attention.share_kv_heads  # back to the class default (off)
    torch.testing.assert_close(shared, repeated, rtol=1e-5, atol=1e-5)
