"""`autarky data build` / `autarky data verify` through the real Typer app."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autarky.cli import app
from fixtures.cli import run_autarky_reporting_imports

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, ["data", *args])


def _one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_build_then_rerun_reports_up_to_date(tiny_corpus_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "data"
    args = [
        "build",
        "--corpus",
        str(tiny_corpus_dir),
        "--glob",
        "json/*.py",
        "--out",
        str(out),
        "--vocab-size",
        "300",
        "--json",
    ]
    first = _run(*args, "--val-fraction", "0.2")
    assert first.exit_code == 0, first.output
    summary = json.loads(first.output)
    assert summary["vocab_size"] == 300 and summary["reused"] is False and "documents" not in summary
    assert summary["config"]["val_fraction"] == 0.2

    again = _run(*args[:-1], "--val-fraction", "0.2", "--quiet")
    assert again.exit_code == 0 and "up to date" in again.output

    verified = _run("verify", str(out))
    assert verified.exit_code == 0 and "all 4 files match" in verified.output
    (out / "val.bin").write_bytes(b"\x00")
    _one_line_error(_run("verify", str(out)), "val.bin", "truncated", "autarky data build")


def test_jsonl_corpus_with_max_mb(tmp_path: Path) -> None:
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text(
        "".join(json.dumps({"text": f"def f{i}(x):\n    return x * {i}\n"}) + "\n" for i in range(300))
    )
    out = tmp_path / "data"
    result = _run(
        "build", "--corpus", str(corpus), "--out", str(out), "--vocab-size", "280", "--max-mb", "0.005"
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["provenance"]["source_kind"] == "jsonl"
    assert 100 < len(manifest["documents"]) < 200  # about 5 kB of ~30-byte documents
    assert all(d["relpath"].startswith("docs.jsonl:") for d in manifest["documents"])


def test_build_process_never_imports_torch(tiny_corpus_dir: Path, tmp_path: Path) -> None:
    # The parent holds the whole-corpus passes (dedup, selection), so its size is the build's largest process;
    # torch would add ~200 MB to it for nothing. Its workers import a subset of what it did (spawned: only the
    # task functions' modules).
    out = tmp_path / "data"
    args = ["data", "build", "--corpus", str(tiny_corpus_dir), "--glob", "json/*.py", "--out", str(out),
            "--vocab-size", "300", "--val-fraction", "0.2", "--workers", "2", "--quiet"]  # fmt: skip
    proc, imported = run_autarky_reporting_imports(args, tmp_path / "modules.json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((out / "manifest.json").read_text())["documents"]
    assert "torch" not in imported and "tokenizers" in imported


def _assert_nothing_written(out: Path) -> None:
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (["--vocab-size", "200"], ["--vocab-size", "259"]),
        (["--vocab-size", "10000000"], ["--vocab-size", "262144"]),
        (["--val-fraction", "0"], ["--val-fraction"]),
        (["--val-fraction", "1"], ["--val-fraction"]),
        (["--val-fraction", "1.5"], ["--val-fraction"]),
        (["--max-mb", "-1"], ["--max-mb"]),
        (["--glob", "**/*.rs"], ["no files", "**/*.rs"]),
        (["--glob", "/etc/*.py"], ["--glob", "relative"]),
        (["--pii", "bogus"], ["--pii: ", "'redact'"]),  # the option's name, not the config field's path
    ],
)
def test_bad_options_are_one_line_errors(tiny_corpus_dir: Path, tmp_path: Path, extra, fragments) -> None:
    out = tmp_path / "data"
    _one_line_error(_run("build", "--corpus", str(tiny_corpus_dir), "--out", str(out), *extra), *fragments)
    _assert_nothing_written(out)


def test_bad_corpora_are_one_line_errors(tmp_path: Path) -> None:
    out = tmp_path / "data"
    _one_line_error(_run("build", "--corpus", str(tmp_path / "missing"), "--out", str(out)), "does not exist")

    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(_run("build", "--corpus", str(empty), "--out", str(out)), "no files", "--glob")
    (empty / "blank.py").write_text("\n\n")
    _one_line_error(_run("build", "--corpus", str(empty), "--out", str(out)), "no non-empty UTF-8 documents")

    no_text = tmp_path / "no_text.jsonl"
    no_text.write_text('{"body": "hello"}\n')
    _one_line_error(_run("build", "--corpus", str(no_text), "--out", str(out)), "no_text.jsonl:1", "'text'")

    not_jsonl = tmp_path / "script.py"
    not_jsonl.write_text("print('hi')\n")
    _one_line_error(_run("build", "--corpus", str(not_jsonl), "--out", str(out)), "not .jsonl")

    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    _one_line_error(_run("build", "--corpus", str(binary), "--out", str(out)), "UTF-8")

    one_doc = tmp_path / "one.jsonl"
    one_doc.write_text('{"text": "only one document"}\n')
    _one_line_error(_run("build", "--corpus", str(one_doc), "--out", str(out)), "split", "is empty")
    _assert_nothing_written(out)


def test_output_dir_that_is_not_a_data_dir(tiny_corpus_dir: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    _one_line_error(_run("build", "--corpus", str(tiny_corpus_dir), "--out", str(foreign)), "not a data dir")
    assert [p.name for p in foreign.iterdir()] == ["keep.txt"]

    a_file = tmp_path / "file"
    a_file.write_text("x")
    _one_line_error(_run("build", "--corpus", str(tiny_corpus_dir), "--out", str(a_file)), "is a file")


def test_verify_missing_dir_and_damaged_copy(tiny_data_dir: Path, tmp_path: Path) -> None:
    _one_line_error(_run("verify", str(tmp_path / "nope")), "does not exist")
    copy = Path(shutil.copytree(tiny_data_dir, tmp_path / "copy"))
    data = bytearray((copy / "train.bin").read_bytes())
    data[100] ^= 0xFF
    (copy / "train.bin").write_bytes(bytes(data))
    _one_line_error(_run("verify", str(copy)), "train.bin", "sha256")
