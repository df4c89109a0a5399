"""What fine-tuning sets from outside to hold less memory: the same losses and gradients, fewer saved bytes, and
glibc's malloc thresholds fixed in the process."""

from __future__ import annotations

import copy
import subprocess
import sys

import torch

from autarky.adapters import LoraConfig, apply_lora
from autarky.finetune.trainer import lean_activations
from autarky.model.config import ModelConfig
from autarky.model.llama import Attention, Llama

CFG = ModelConfig(vocab_size=256, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, max_seq_len=64)
TOKENS = torch.randint(0, CFG.vocab_size, (2, 32), generator=torch.Generator().manual_seed(3))
SEGMENTS = torch.tensor([[0] * 20 + [1] * 12, [0] * 32])


def _lora_model() -> Llama:
    model = Llama(CFG)
    model.init_weights(seed=0)
    apply_lora(model, LoraConfig(rank=4, alpha=8), seed=1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("lora_B"):
                param.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    return model.train()


def _step(model: Llama) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    sizes: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        sizes[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(TOKENS, segments=SEGMENTS)
    logits.square().mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads, sum(sizes.values())


def test_lean_activations_change_no_value_or_gradient_and_keep_less() -> None:
    plain = _lora_model()
    lean = copy.deepcopy(plain)
    lean_activations(lean, torch.device("cpu"))
    assert all(m.share_kv_heads for m in lean.modules() if isinstance(m, Attention))
    want, want_grads, want_bytes = _step(plain)
    got, got_grads, got_bytes = _step(lean)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    # Per block: two (tokens, ffn_dim) SwiGLU tensors fewer, and keys/values kept at K heads instead of H.
    tokens, head_dim = TOKENS.numel(), CFG.dim // CFG.n_heads
    per_block = 2 * tokens * CFG.ffn_dim + 2 * tokens * (CFG.n_heads - CFG.n_kv_heads) * head_dim
    assert want_bytes - got_bytes == 4 * CFG.n_layers * per_block, (got_bytes, want_bytes)


def test_freed_memory_goes_back_to_the_os() -> None:
    # In a fresh process: a 64 MiB block freed after a bigger one was mmapped and freed (which, by default, raises
    # glibc's threshold so the next blocks come from the heap) is all returned to the OS only with the thresholds
    # fixed.
    script = """
import sys, torch
from autarky.finetune.memory import return_freed_memory
if sys.argv[1] == "fixed":
    assert return_freed_memory()
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
x = torch.ones(4 * 2**20); del x  # 16 MiB, mmapped then freed
held, kept = [], []
for _ in range(16):  # 16 × 4 MiB, each followed by a live 64 KiB block (below any threshold: on the heap)
    held.append(torch.ones(2**20))
    kept.append(torch.ones(2**14))
before = rss()
del held
print(before - rss())
"""
    freed = {}
    for mode in ("default", "fixed"):
        out = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, check=True)
        freed[mode] = float(out.stdout.split()[-1])
    assert freed["fixed"] > 60 and freed["default"] < 60, freed  # all 64 MiB, against part of it at most
