"""The export stage: a training run's checkpoint as a Hugging Face folder, and every form a model can be named in.

`export_run(run_dir, out_dir)` writes the HF folder; `resolve_model_source(spec)` turns an HF folder, a `.gguf`
file, a run dir or the alias `smollm2` into an HF folder; `load_model(spec)` gives our Llama for any of them.
Run dirs are read through `autarky.contracts.rundir`.
"""

from autarky.lazy import public

__all__, __getattr__ = public(__name__, {
    "export_run": "hf_folder",
    "load_run": "hf_folder",
    "parse_dtype": "hf_folder",
    "resolve_model_source": "source",
    "exported_run_folder": "source",
    "load_model": "source",
})
