"""Per-row logit adjustments: logit_bias, the three penalties (vLLM's semantics), min_p, and allowed masks."""

from __future__ import annotations

import torch

from autarky.model.sampling import History, SamplingParams, adjusted_rows, sample_rows, unpack_mask

V = 8


def _logits() -> torch.Tensor:
    return torch.tensor([[2.0, -1.0, 0.5, 0.0, 1.0, -2.0, 3.0, 0.1]] * 3)


def test_plain_rows_are_untouched_and_the_input_is_not_modified():
    logits, before = _logits(), _logits()
    params = [SamplingParams(temperature=0), SamplingParams(temperature=0, logit_bias=((1, 50.0),)),
              SamplingParams(temperature=0)]
    assert sample_rows(logits, params, [None] * 3) == [6, 1, 6]
    assert torch.equal(logits, before)


def test_penalties_follow_vllm():
    p = SamplingParams(presence_penalty=0.5, frequency_penalty=0.25, repetition_penalty=2.0)
    rows = adjusted_rows(_logits(), [1, 2], [SamplingParams(), p, p], [None, History([0, 5], [6, 6, 1]), None])
    row = rows[0]
    assert torch.equal(rows[1], _logits()[2])  # no history yet: nothing to penalize
    assert row[0] == 1.0  # prompt token, positive: divided by the repetition penalty, no presence/frequency
    assert row[5] == -4.0  # prompt token, negative: multiplied
    assert row[6] == 3.0 / 2 - 0.25 * 2 - 0.5  # generated twice
    assert row[1] == -2.0 - 0.25 - 0.5  # generated once, negative
    assert row[2] == 0.5  # never seen


def test_min_p_one_is_greedy_and_allowed_masks_bind():
    params = [SamplingParams(temperature=1.5, min_p=1.0, seed=s) for s in range(3)]
    gens = [p.generator(0) for p in params]
    assert sample_rows(_logits(), params, gens) == [6, 6, 6]
    allowed = {1: torch.tensor([0b1100], dtype=torch.int32)}  # tokens 2 and 3
    assert unpack_mask(allowed[1], V).tolist() == [False, False, True, True, False, False, False, False]
    greedy = [SamplingParams(temperature=0)] * 3
    assert sample_rows(_logits(), greedy, [None] * 3, allowed=allowed) == [6, 2, 6]
    for params in (SamplingParams(temperature=1.0, seed=0), SamplingParams(temperature=1.0, top_p=0.9, seed=0)):
        gen = params.generator(0)
        drawn = {sample_rows(_logits()[:1], [params], [gen], allowed={0: allowed[1]})[0] for _ in range(50)}
        assert drawn == {2, 3}


def test_rejection_then_mask_draws_the_masked_distribution():
    """Draw from p, redraw from p restricted to the allowed set on a miss: each allowed token comes out with
    probability p(t) / p(allowed), as when the mask is applied first."""
    logits = torch.tensor([[1.0, 0.0, 2.0, 0.5]])
    words = torch.tensor([0b0011], dtype=torch.int32)  # tokens 0 and 1
    params = SamplingParams(temperature=1.0, seed=3)
    gen = params.generator(0)
    counts = torch.zeros(4)
    for _ in range(4000):
        counts[sample_rows(logits, [params], [gen], allowed={0: words})[0]] += 1
    expected = torch.tensor([1.0, 0.0]).softmax(-1)
    assert counts[2:].sum() == 0 and torch.allclose(counts[:2] / 4000, expected, atol=0.03)


def test_an_all_greedy_batch_picks_each_rows_argmax_like_a_mixed_batch():
    logits = torch.randn(5, 300, generator=torch.Generator().manual_seed(0))
    greedy = [SamplingParams(temperature=0)] * 5
    mixed = [*greedy[:4], SamplingParams(temperature=0, logit_bias=((7, 0.0),))]  # takes the per-row path
    expected = [int(row.argmax()) for row in logits]
    assert sample_rows(logits, greedy, [None] * 5) == expected
    assert sample_rows(logits, mixed, [None] * 5) == expected
    masked = sample_rows(logits, greedy, [None] * 5, allowed={0: torch.tensor([1 << 3] + [0] * 9, dtype=torch.int32)})
    assert masked[0] == 3 and masked[1:] == expected[1:]  # a grammar's mask still binds
