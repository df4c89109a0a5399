"""RoPE tables: Llama 3.1's frequency scaling equals transformers' own computation; no scaling is plain RoPE."""

import pytest
import torch
import transformers
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from autarky.model.config import RopeScaling
from autarky.model.rope import inverse_frequencies, rope_tables


@pytest.mark.parametrize(("factor", "original", "head_dim"), [(8.0, 8192, 128), (32.0, 8192, 64), (4.0, 16, 16)])
def test_llama3_frequencies_equal_transformers(factor: float, original: int, head_dim: int) -> None:
    rope = {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": original, "rope_theta": 500_000.0}
    config = transformers.LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, head_dim=head_dim,
                                      max_position_embeddings=original * 16, rope_parameters=rope)
    theirs, attention_factor = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    ours = inverse_frequencies(head_dim, 500_000.0, RopeScaling(factor, 1.0, 4.0, original))
    assert attention_factor == 1.0
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    plain = inverse_frequencies(head_dim, 500_000.0)
    assert ours[-1] == pytest.approx(plain[-1].item() / factor)  # the lowest frequency is stretched
    if original >= 1024:
        assert ours[0] == plain[0]  # the highest (wavelength 2π, far below original / 4) is kept


def test_tables_without_scaling_are_plain_rope() -> None:
    cos, sin = rope_tables(8, 5, 10_000.0)
    angles = torch.arange(5.0)[:, None] * (1.0 / 10_000.0 ** (torch.arange(0, 8, 2) / 8))[None]
    torch.testing.assert_close(cos, torch.cat([angles, angles], -1).cos())
    torch.testing.assert_close(sin, torch.cat([angles, angles], -1).sin())


def test_inconsistent_scaling_is_refused() -> None:
    with pytest.raises(ValueError, match="low_freq_factor < high_freq_factor"):
        RopeScaling(8.0, 4.0, 1.0, 8192)
