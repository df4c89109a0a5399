"""Streaming: a build's peak memory stays flat as the corpus grows; oversized documents are split or skipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autarky.data import DataConfig, build_dataset
from fixtures.data import write_jsonl, write_large_jsonl

pytestmark = pytest.mark.slow

_MEASURE = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)  # Linux: kB; the largest single process
"""


def _peak_rss(corpus: Path, out: Path) -> int:
    """Peak resident bytes of any one process of a 2-worker `autarky data build`, measured from outside."""
    build = [sys.executable, "-m", "autarky", "data", "build", "--corpus", str(corpus), "--out", str(out),
             "--vocab-size", "512", "--workers", "2", "--quiet"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run([sys.executable, "-c", _MEASURE, *build], capture_output=True, text=True, env=env,
                            check=True)
    return int(result.stdout.strip())


@pytest.mark.timeout(1500)  # two subprocess builds; minutes on a busy 2-core CI machine
def test_peak_memory_is_flat_as_the_corpus_grows(tmp_path: Path) -> None:
    small = write_large_jsonl(tmp_path / "small.jsonl", 8, seed=1)
    large = write_large_jsonl(tmp_path / "large.jsonl", 48, seed=2)
    small_peak = _peak_rss(small, tmp_path / "small-out")
    large_peak = _peak_rss(large, tmp_path / "large-out")
    print(f"peak RSS: {small_peak / 1e6:.0f} MB at 8 MB, {large_peak / 1e6:.0f} MB at 48 MB")
    manifest = json.loads((tmp_path / "large-out" / "manifest.json").read_text())
    assert manifest["provenance"]["tasks"] >= 2 and manifest["splits"]["train"]["documents"] > 5_000
    # six times the input, and the peak (the `autarky` process, whose CLI imports torch: ~250 MB before any work)
    # barely moves; the workers and the tokenizer trainer run in their own processes
    assert large_peak < small_peak + 48e6, (small_peak, large_peak)
    assert large_peak < 600e6, large_peak


def test_oversized_documents_are_split_or_skipped(tmp_path: Path) -> None:
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(20):
        (folder / f"small{i}.txt").write_text(f"document number {i} says hello world\n" * 5)
    (folder / "huge.txt").write_text("".join(f"line {i} of a long file\n" for i in range(5000)))  # ~120 kB
    write_jsonl(tmp_path / "lines.jsonl", ["short one", "x" * 150_000, "short two"])
    quality = {"max_doc_mb": 0.05, "max_repeated_lines": None}

    split = build_dataset(DataConfig(out=tmp_path / "split", corpus=str(folder), glob="*.txt", vocab_size=300,
                                     val_fraction=0.2, quality=quality), progress=False)
    parts = sorted(d["relpath"] for d in split["documents"] if d["relpath"].startswith("huge.txt#"))
    assert parts == ["huge.txt#0", "huge.txt#1", "huge.txt#2"] and split["provenance"]["oversized_split"] == 1

    skip = build_dataset(DataConfig(out=tmp_path / "skip", corpus=str(folder), glob="*.txt", vocab_size=300,
                                    val_fraction=0.2, quality={**quality, "oversized": "skip"}), progress=False)
    assert skip["filters"]["oversized_skipped"] == 1 and not any("huge" in d["relpath"] for d in skip["documents"])

    lines = build_dataset(DataConfig(out=tmp_path / "lines", corpus=str(tmp_path / "lines.jsonl"), vocab_size=300,
                                     val_fraction=0.4, quality=quality), progress=False)
    assert lines["filters"]["oversized_skipped"] == 1 and len(lines["documents"]) == 2
