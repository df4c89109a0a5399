"""Data build throughput and peak memory: `autarky data build` vs datatrove's local pipeline, same corpus.

The corpus is generated on the fly into a temp dir (never checked in, deleted afterwards): distinct random-word
documents with a few numbers each (so the PII pass has digits to scan, as on real text) plus ~2% exact and ~2%
near duplicates, written once as one JSONL file (ours cuts it into line-aligned tasks) and once as the same lines
split into files (datatrove gives each task whole files). Both pipelines do the same work with 2 workers:
  read → exact + MinHash dedup (5-grams, 14 bands × 8 rows) → tokenize into shards
ours: `autarky data build --workers 2` (the console script; quality filters and the PII pass on: more work than
datatrove does here); datatrove: JsonlReader → MinhashDedupSignature, MinhashDedupBuckets, MinhashDedupCluster,
then JsonlReader → MinhashDedupFilter → DocumentTokenizer with OUR trained tokenizer.json (so both encode with the
same BPE), in LocalPipelineExecutor(workers=2). datatrove has no separate exact-dedup stage in this chain:
byte-identical documents have identical signatures and fall to MinHash. datatrove is installed by this script into
its own venv under the bench's temp dir, never into the project's environment.

Memory is sampled from /proc every 50 ms over the whole process tree of each run, the same way for both sides, as
PSS (proportional set size: a page shared by n processes counts 1/n in each, so the sum over the tree is what
the tree holds): "tree" is the largest sum over all its processes at one moment, "largest" the largest single
process, "worker" the largest process other than the one we started (its parent). Plain RSS would count a
spawned worker, between fork and exec, at its parent's full size.
--sizes-mb 250 500 1000 runs the pair once per size and ends with the memory curve.
Usage: .venv/bin/python bench/data_build.py [--size-mb 200 | --sizes-mb 250 500 1000] [--datatrove-python PY]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

import numpy as np

# Runs the command, samples the RSS of its process tree from /proc, prints one JSON line.
_MEASURE = r"""
import json, os, subprocess, sys, time

def tree(root):
    children = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(pid))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found

def rss(pid):
    # PSS: shared pages split among the processes that map them, so a child between fork and exec (it still maps
    # all of its parent) or pages shared by workers are not counted twice
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0

proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
peak_tree = peak_worker = peak_single = 0
while proc.poll() is None:
    sizes = {pid: rss(pid) for pid in tree(proc.pid)}
    peak_tree = max(peak_tree, sum(sizes.values()))
    peak_single = max([peak_single, *sizes.values()])
    peak_worker = max([peak_worker] + [s for pid, s in sizes.items() if pid != proc.pid])
    time.sleep(0.05)
if proc.returncode:
    sys.exit(proc.returncode)
largest = peak_single
print(json.dumps({"tree": peak_tree, "largest": largest, "worker": peak_worker}))
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

_VOCAB = np.array([f"{a}{b}{c}" for a in "bcdfghklmnprstvz" for b in "aeiou" for c in "lmnprstx"]
                  + [str(n) for n in (7, 12, 42, 365, 1987, 2024, 3.5, 100)])


def generate(folder: Path, megabytes: float, files: int, seed: int = 0) -> tuple[Path, Path, int]:
    """One JSONL file and the same lines in `files` files; ~2% exact and ~2% near duplicates planted."""
    rng = np.random.default_rng(seed)
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
                text = recent[rng.integers(len(recent))]
            elif roll < 0.04 and recent:
                words = recent[rng.integers(len(recent))].split(" ")
                words[rng.integers(len(words))] = "zzz"
                text = " ".join(words)
            else:
                text = " ".join(_VOCAB[rng.integers(0, len(_VOCAB), rng.integers(200, 2000))].tolist())
                recent = (recent + [text])[-100:]
            line = json.dumps({"text": text, "id": f"d{n}"}) + "\n"
            f.write(line)
            parts[n % files].write(line)
            n += 1
    for part in parts:
        part.close()
    return single, split_dir, n


def measured(cmd: list[str], env: dict | None = None) -> tuple[float, dict]:
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"{cmd[:2]} failed:\n{out.stderr[-3000:]}")
    return time.perf_counter() - started, json.loads(out.stdout.strip().splitlines()[-1])


def datatrove_python(root: Path, spec: str) -> Path:
    env_dir = root / "datatrove-venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", spec, "tokenizers", "orjson", "spacy"], check=True)
    return python


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def one_size(root: Path, megabytes: float, files: int, python: Path, datatrove: bool) -> dict:
    """Ours and datatrove's on one generated corpus; the corpus and outputs are deleted afterwards."""
    folder = root / f"{megabytes:g}mb"
    try:
        single, split_dir, docs = generate(folder, megabytes, files)
        size = single.stat().st_size
        print(f"corpus: {size / 1e6:,.1f} MB, {docs:,} documents; load {_load()}", flush=True)
        autarky = Path(sys.executable).with_name("autarky")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        ours_out = folder / "ours"
        ours_s, ours_rss = measured([str(autarky), "data", "build", "--corpus", str(single), "--out", str(ours_out),
                                     "--workers", "2", "--vocab-size", "4096", "--quiet"], env)
        manifest = json.loads((ours_out / "manifest.json").read_text())
        ours_tokens = sum(s["tokens"] for s in manifest["splits"].values())
        print(f"ours done in {ours_s:.0f} s ({size / 1e6 / ours_s:.2f} MB/s, peak MB {_mb(ours_rss)}); "
              f"load {_load()}", flush=True)
        if not datatrove:
            return {"mb": size / 1e6, "ours": ours_rss, "ours_s": ours_s}
        script = folder / "datatrove_pipeline.py"
        script.write_text(_DATATROVE)
        dt_s, dt_rss = measured([str(python), str(script), str(split_dir), str(folder / "dt"),
                                 str(ours_out / "tokenizer.json"), str(files)])
        dt_tokens = sum(p.stat().st_size for p in (folder / "dt" / "tokens").rglob("*.ds")) // 2
        print(f"datatrove done in {dt_s:.0f} s; load {_load()}", flush=True)
        rows = [("ours", ours_s, ours_rss, ours_tokens), ("datatrove", dt_s, dt_rss, dt_tokens)]
        print(f"{'':10} {'MB/s':>7} {'tokens/s':>10} {'tree MB':>8} {'largest MB':>10} {'worker MB':>9} {'tokens':>12}")
        for name, seconds, rss, tokens in rows:
            print(f"{name:10} {size / 1e6 / seconds:7.2f} {tokens / seconds:10,.0f} {rss['tree'] / 1e6:8.0f} "
                  f"{rss['largest'] / 1e6:10.0f} {rss['worker'] / 1e6:9.0f} {tokens:12,}")
        print(f"ratios (ours / datatrove): throughput {dt_s / ours_s:.2f}x, tree RSS {ours_rss['tree'] / dt_rss['tree']:.2f}x,"
              f" largest process {ours_rss['largest'] / dt_rss['largest']:.2f}x, worker {ours_rss['worker'] / dt_rss['worker']:.2f}x")
        print(f"removed: ours {manifest['filters']}; load {_load()}", flush=True)
        return {"mb": size / 1e6, "ours": ours_rss, "datatrove": dt_rss, "ours_s": ours_s, "dt_s": dt_s}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _mb(rss: dict) -> str:
    return " / ".join(f"{rss[k] / 1e6:5.0f}" for k in ("tree", "largest", "worker"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", "--mb", type=float, default=200.0, help="corpus size in MB")
    parser.add_argument("--sizes-mb", type=float, nargs="+", help="several sizes, one run each: the memory curve")
    parser.add_argument("--files", type=int, default=8, help="files for datatrove's tasks")
    parser.add_argument("--datatrove-max-mb", type=float, default=float("inf"),
                        help="run datatrove only on corpora up to this size (it is the slower side)")
    parser.add_argument("--datatrove-spec", default="datatrove[processing]", help="what pip installs")
    parser.add_argument("--datatrove-python", type=Path, help="reuse a venv's python that has datatrove already")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="autarky-data-bench-"))
    try:
        python = args.datatrove_python or datatrove_python(root, args.datatrove_spec)
        results = [one_size(root, mb, args.files, python, mb <= args.datatrove_max_mb)
                   for mb in (args.sizes_mb or [args.size_mb])]
        if len(results) > 1:
            print("memory curve (peak MB: tree / largest process / largest worker), and MB/s:")
            for r in results:
                line = f"  {r['mb']:8,.0f} MB  ours {_mb(r['ours'])} at {r['mb'] / r['ours_s']:5.2f} MB/s"
                if "datatrove" in r:
                    line += f"   datatrove {_mb(r['datatrove'])} at {r['mb'] / r['dt_s']:5.2f} MB/s"
                print(line)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
