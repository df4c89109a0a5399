"""A served random-weights model with room for tool prompts and long constrained outputs.

`tiny_model`: the tiny model and its codec as loaded, and with the compiled decode kernels (module scope, both).
`served_tiny_long`: the tiny model's shape and tokenizer (random weights, seed 0) with a 2048-token context, served
under the name "tiny-long". The weights would write garbage: whatever parses in its output is the grammar's doing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures.servers import ServedEndpoint


@pytest.fixture(scope="session")
def tiny_long_hf_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_data_dir: Path) -> Path:
    import torch

    from autarky.model.hf import save_hf_folder
    from autarky.model.llama import Llama
    from autarky.model.sizes import preset
    from autarky.model.tokenizer import load_hf_folder_tokenizer

    vocab = load_hf_folder_tokenizer(tiny_data_dir).get_vocab_size()
    model = Llama(preset("nano", vocab_size=vocab, max_seq_len=2048))
    model.init_weights(seed=0)
    return save_hf_folder(model, tiny_data_dir, tmp_path_factory.mktemp("tiny-long") / "model", torch.float32)


@pytest.fixture(scope="session")
def served_tiny_long(tiny_long_hf_model_dir: Path) -> Iterator[ServedEndpoint]:
    from autarky.serve.registry import ModelRegistry, ServedModelSpec
    from autarky.serve.server import Server

    spec = ServedModelSpec(source=str(tiny_long_hf_model_dir), name="tiny-long", max_batch=16, max_queue=64)
    server = Server(ModelRegistry([spec])).start()
    try:
        yield ServedEndpoint(server.url, "tiny-long", tiny_long_hf_model_dir)
    finally:
        server.stop()


@pytest.fixture(scope="module", params=["eager", "decode_kernels"])
def tiny_model(tiny_hf_model_dir: Path, request: pytest.FixtureRequest) -> tuple:
    from autarky.model.hf import load_hf_folder
    from autarky.serve.decode_kernels import use_decode_kernels
    from autarky.serve.text import TextCodec

    model, _ = load_hf_folder(tiny_hf_model_dir)
    if request.param == "decode_kernels":
        assert use_decode_kernels(model)
    return model, TextCodec.from_folder(tiny_hf_model_dir)
