"""The export stage: a training run's checkpoint as a Hugging Face folder, and every form a model can be named in.

`export_run(run_dir, out_dir)` writes the HF folder; `resolve_model_source(spec)` turns an HF folder, a `.gguf`
file, a run dir or the alias `smollm2` into an HF folder; `load_model(spec)` gives our Llama for any of them.
"""
