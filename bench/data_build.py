"""Data build throughput and peak memory: `autarky data build` vs datatrove's local pipeline, same corpus.

The corpus is generated on the fly (never checked in): distinct random-word documents plus planted exact and near
duplicates, written once as one JSONL file (ours cuts it into line-aligned tasks) and once as the same lines split
into files (datatrove gives each task whole files). Both pipelines do the same work with 2 workers:
  read → exact + MinHash dedup (5-grams, 14 bands × 8 rows) → tokenize into shards
ours: `autarky data build --workers 2` (quality filters and the PII pass on: more work than datatrove does here);
datatrove: JsonlReader → MinhashDedupSignature, MinhashDedupBuckets, MinhashDedupCluster, then JsonlReader →
MinhashDedupFilter → DocumentTokenizer with OUR trained tokenizer.json (so both encode with the same BPE), in
LocalPipelineExecutor(workers=2). datatrove has no separate exact-dedup stage in this chain: byte-identical
documents have identical signatures and fall to MinHash. datatrove is installed by this script into its own venv
under the bench's temp dir, never into the project's environment.

Peak RSS is the largest single process of each run (getrusage RUSAGE_CHILDREN of a wrapper process).
Usage: .venv/bin/python bench/data_build.py [--mb 200] [--keep] [--datatrove-spec datatrove] [--datatrove-python PY]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

_MEASURE = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
"""

_DATATROVE = """
import sys
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.dedup import MinhashDedupSignature
from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                              MinhashDedupFilter)
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.tokens import DocumentTokenizer

def run(pipeline, n, logs):
    LocalPipelineExecutor(pipeline=pipeline, tasks=n, workers=2, logging_dir=f"{sys.argv[2]}/logs/{logs}").run()


if __name__ == "__main__":  # datatrove's pool spawns: the main module is imported again
    src, work, tokenizer, tasks = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    try:
        from datatrove.utils.hashing import HashConfig
        cfg = MinhashConfig(hash_config=HashConfig(precision=64), n_grams=5, num_buckets=14, hashes_per_bucket=8)
    except ImportError:  # older datatrove
        cfg = MinhashConfig(use_64bit_hashes=True, n_grams=5, num_buckets=14, hashes_per_bucket=8)
    run([JsonlReader(src), MinhashDedupSignature(output_folder=f"{work}/sigs", config=cfg)], tasks, "sigs")
    run([MinhashDedupBuckets(input_folder=f"{work}/sigs", output_folder=f"{work}/buckets", config=cfg)], 14, "buckets")
    run([MinhashDedupCluster(input_folder=f"{work}/buckets", output_folder=f"{work}/remove", config=cfg)], 1, "cluster")
    run([JsonlReader(src), MinhashDedupFilter(input_folder=f"{work}/remove"),
         DocumentTokenizer(output_folder=f"{work}/tokens", tokenizer_name_or_path=tokenizer, eos_token="<|endoftext|>",
                           save_filename="train", shuffle_documents=False)], tasks, "tokenize")
"""


def generate(folder: Path, megabytes: float, files: int, seed: int = 0) -> tuple[Path, Path, int]:
    """One JSONL file and the same lines in `files` files; ~2% exact and ~2% near duplicates planted."""
    rng = random.Random(seed)
    vocab = [f"{a}{b}{c}" for a in "bcdfghklmnprstvz" for b in "aeiou" for c in "lmnprstx"]
    single = folder / "corpus.jsonl"
    split_dir = folder / "split"
    split_dir.mkdir(parents=True)
    parts = [(split_dir / f"part-{i:03d}.jsonl").open("w") for i in range(files)]
    recent: list[str] = []
    n = 0
    with single.open("w") as f:
        while f.tell() < megabytes * 1_000_000:
            roll = rng.random()
            if roll < 0.02 and recent:
                text = rng.choice(recent)
            elif roll < 0.04 and recent:
                words = rng.choice(recent).split(" ")
                words[rng.randrange(len(words))] = "zzz"
                text = " ".join(words)
            else:
                text = " ".join(rng.choice(vocab) for _ in range(rng.randint(200, 2000)))
                recent = (recent + [text])[-100:]
            line = json.dumps({"text": text, "id": f"d{n}"}) + "\n"
            f.write(line)
            parts[n % files].write(line)
            n += 1
    for part in parts:
        part.close()
    return single, split_dir, n


def measured(cmd: list[str], env: dict | None = None) -> tuple[float, int]:
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"{cmd[:2]} failed:\n{out.stderr[-3000:]}")
    return time.perf_counter() - started, int(out.stdout.strip().splitlines()[-1])


def datatrove_python(root: Path, spec: str) -> Path:
    env_dir = root / "datatrove-venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", spec, "tokenizers", "orjson", "spacy"], check=True)
    return python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=200.0, help="corpus size in MB (the issue asks for a few GB)")
    parser.add_argument("--files", type=int, default=8, help="files for datatrove's tasks")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    parser.add_argument("--datatrove-spec", default="datatrove[processing]", help="what pip installs")
    parser.add_argument("--datatrove-python", type=Path, help="reuse a venv's python that has datatrove already")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="autarky-data-bench-"))
    try:
        single, split_dir, docs = generate(root, args.mb, args.files)
        size = single.stat().st_size
        print(f"corpus: {size / 1e6:,.1f} MB, {docs:,} documents, in {root}")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        ours_out = root / "ours"
        ours_s, ours_rss = measured([sys.executable, "-m", "autarky", "data", "build", "--corpus", str(single),
                                     "--out", str(ours_out), "--workers", "2", "--vocab-size", "4096",
                                     "--quiet"], env)
        manifest = json.loads((ours_out / "manifest.json").read_text())
        ours_tokens = sum(s["tokens"] for s in manifest["splits"].values())
        python = args.datatrove_python or datatrove_python(root, args.datatrove_spec)
        script = root / "datatrove_pipeline.py"
        script.write_text(_DATATROVE)
        dt_s, dt_rss = measured([str(python), str(script), str(split_dir), str(root / "dt"),
                                 str(ours_out / "tokenizer.json"), str(args.files)])
        dt_tokens = sum(p.stat().st_size for p in (root / "dt" / "tokens").rglob("*.ds")) // 2
        rows = [("ours", ours_s, ours_rss, ours_tokens), ("datatrove", dt_s, dt_rss, dt_tokens)]
        print(f"{'':10} {'MB/s':>8} {'tokens/s':>12} {'peak RSS MB':>12} {'tokens':>12}")
        for name, seconds, rss, tokens in rows:
            print(f"{name:10} {size / 1e6 / seconds:8.2f} {tokens / seconds:12,.0f} {rss / 1e6:12.0f} {tokens:12,}")
        print(f"ratios (ours / datatrove): throughput {dt_s / ours_s:.2f}x, peak RSS {ours_rss / dt_rss:.2f}x")
        print(f"removed: ours {manifest['filters']}")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
