"""Sources and mixtures: folders, JSONL, JSONL.zst and Parquet in one TOML data config, with weights."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from typer.testing import CliRunner

from autarky.cli import app
from autarky.data import DataConfig, build_dataset, load_tokenizer, readers
from autarky.data.readers import plan_source
from fixtures.data import texts, write_jsonl

runner = CliRunner()


def _one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    """One folder of each kind under tmp_path/src: notes/*.txt, web.jsonl, books.jsonl.zst, code.parquet."""
    src = tmp_path / "src"
    (src / "notes").mkdir(parents=True)
    for i, text in enumerate(texts(30, seed=1)):
        (src / "notes" / f"n{i}.txt").write_text(text)
    write_jsonl(src / "web.jsonl", texts(40, seed=2), ids=True)
    raw = "".join(json.dumps({"text": t}) + "\n" for t in texts(40, seed=3)).encode()
    (src / "books.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    table = pa.table({"text": texts(40, seed=4), "id": [f"c{i}" for i in range(40)]})
    pq.write_table(table, src / "code.parquet", row_group_size=10)
    return src


_TOML = """
vocab_size = 300
val_fraction = 0.2
[[sources]]
name = "notes"
path = "src/notes"
glob = "*.txt"
weight = 0.4
[[sources]]
name = "web"
path = "src/web.jsonl"
weight = 0.2
[[sources]]
name = "books"
path = "src/books.jsonl.zst"
weight = 0.2
[[sources]]
name = "code"
path = "src/code.parquet"
weight = 0.2
"""


def test_a_mixture_of_every_source_kind_from_a_toml_config(sources: Path, tmp_path: Path) -> None:
    config = tmp_path / "data.toml"
    config.write_text(_TOML)
    out = tmp_path / "data"
    result = runner.invoke(app, ["data", "build", "--config", str(config), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "source notes" in result.output and "weight 0.4" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert {name: (s["kind"], s["weight"], s["documents"]) for name, s in manifest["sources"].items()} == {
        "notes": ("folder", 0.4, 30), "web": ("jsonl", 0.2, 40), "books": ("jsonl.zst", 0.2, 40),
        "code": ("parquet", 0.2, 40),
    }
    names = {d["relpath"] for d in manifest["documents"]}
    assert {"notes/n0.txt", "web/web.jsonl:d3", "books/books.jsonl.zst:7", "code/code.parquet:c39"} <= names
    for name, source in manifest["sources"].items():
        in_source = [d for d in manifest["documents"] if d["source"] == name]
        assert source["tokens"] == sum(d["tokens"] + 1 for d in in_source) > 0
    assert manifest["provenance"]["source_kind"] == "mixture" and manifest["config"]["sources"][0]["glob"] == "*.txt"


def test_max_mb_is_shared_by_weight_and_applied_while_reading(sources: Path, tmp_path: Path) -> None:
    config = DataConfig.from_toml(_write(tmp_path / "data.toml", _TOML), out=tmp_path / "data", max_mb=0.01)
    manifest = build_dataset(config, progress=False)
    by_source = {name: s["text_bytes"] for name, s in manifest["sources"].items()}
    assert 4_000 <= by_source["notes"] < 6_000 and all(2_000 <= by_source[n] < 3_500 for n in ("web", "books", "code"))
    assert manifest["provenance"]["bytes_read"] < 20_000  # the rest of each source was never read


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("block", [1 << 20, 4096, 333])
def test_jsonl_is_cut_into_line_aligned_tasks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int) -> None:
    monkeypatch.setattr(readers, "_BLOCK", block)  # cuts inside later blocks and lines across blocks
    path = write_jsonl(tmp_path / "big.jsonl", texts(200, seed=5))
    tasks = plan_source("corpus", "", str(path), "", None, 20_000, 0)
    assert len(tasks) == 5 and tasks[0].start == 0 and tasks[-1].end == path.stat().st_size
    assert all(a.end == b.start for a, b in zip(tasks, tasks[1:], strict=False))
    data = path.read_bytes()
    for task in tasks:
        assert task.start == 0 or data[task.start - 1 : task.start] == b"\n"
        assert task.first_line == data[: task.start].count(b"\n") + 1


def test_reusing_a_base_models_tokenizer(tiny_data_dir: Path, sources: Path, tmp_path: Path) -> None:
    cfg = DataConfig(out=tmp_path / "ft", corpus=str(sources / "web.jsonl"), tokenizer=str(tiny_data_dir),
                     val_fraction=0.2)
    manifest = build_dataset(cfg, progress=False)
    assert (tmp_path / "ft" / "tokenizer.json").read_bytes() == (tiny_data_dir / "tokenizer.json").read_bytes()
    assert manifest["vocab_size"] == 512 and manifest["provenance"]["tokenizer_reused_from"] == str(tiny_data_dir)
    assert load_tokenizer(tmp_path / "ft").get_vocab_size() == 512


@pytest.mark.parametrize(
    ("setup", "fragments"),
    [
        ("weights", ["weights must sum to 1", "0.9"]),
        ("toml-key", ["w.toml", "sources[1].corpus: Extra inputs"]),  # named as written in the file
        ("parquet", ["not a readable Parquet file"]),
        ("parquet-no-text", ["no 'text' column"]),
        ("parquet-int-text", ["'text' column holds int64, not strings"]),
        ("zst", ["not a readable zstd file"]),
        ("zst-truncated", ["bad.jsonl.zst ends inside a zstd frame"]),
        ("ray", ["--ray-address", "no Ray cluster answers"]),
        ("tokenizer", ["--tokenizer", "no tokenizer.json"]),
    ],
)
def test_bad_input_is_one_line_and_leaves_no_manifest(sources: Path, tmp_path: Path, setup: str, fragments) -> None:
    out = tmp_path / "data"
    args = ["data", "build", "--out", str(out), "--vocab-size", "300"]
    if setup == "weights":
        args += ["--config", str(_write(tmp_path / "w.toml", _TOML.replace("weight = 0.4", "weight = 0.3")))]
    elif setup == "toml-key":
        args += ["--config", str(_write(tmp_path / "w.toml", _TOML.replace('path = "src/web.jsonl"', 'corpus = "x"')))]
    elif setup == "parquet":
        args += ["--corpus", str(_write(tmp_path / "bad.parquet", "PAR1 not really"))]
    elif setup == "parquet-no-text":
        pq.write_table(pa.table({"body": ["x"]}), tmp_path / "body.parquet")
        args += ["--corpus", str(tmp_path / "body.parquet")]
    elif setup == "parquet-int-text":
        pq.write_table(pa.table({"text": [1, 2, 3]}), tmp_path / "ints.parquet")
        args += ["--corpus", str(tmp_path / "ints.parquet")]
    elif setup == "zst":
        (tmp_path / "bad.jsonl.zst").write_bytes(b"\x28\xb5\x2f\xfd garbage")
        args += ["--corpus", str(tmp_path / "bad.jsonl.zst")]
    elif setup == "zst-truncated":  # a cut-off copy (an interrupted download) must not build a shorter corpus
        whole = (sources / "books.jsonl.zst").read_bytes()
        (tmp_path / "bad.jsonl.zst").write_bytes(whole[: len(whole) // 2])
        args += ["--corpus", str(tmp_path / "bad.jsonl.zst")]
    elif setup == "ray":
        args += ["--corpus", str(sources / "web.jsonl"), "--ray-address", "127.0.0.1:9"]
    else:
        args += ["--corpus", str(sources / "web.jsonl"), "--tokenizer", str(tmp_path)]
    _one_line_error(runner.invoke(app, args), *fragments)
    assert not out.exists()
