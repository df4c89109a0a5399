"""Quality and governance: near-duplicates, quality filters, the PII pass, and `data forget`."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from autarky.cli import app
from autarky.data import DataConfig, build_dataset, load_tokenizer, open_tokens, verify_data_dir
from autarky.data.filters import scan_pii
from autarky.data.forget import forget_document
from autarky.errors import UserError
from fixtures.data import near_copy, texts, write_jsonl

_PII = {
    "email": "write to alice.smith@example.com today",
    "phone": "call +1 415-555-0132 after six",
    "ip": "the box at 10.23.4.56 answers",
    "credit_card": "card 4111 1111 1111 1111 expires",
    "secret": "key sk-abcdefghijklmnopqrstuvwxyz0123456789 leaked",
}


def _cfg(corpus: Path, out: Path, **fields) -> DataConfig:
    return DataConfig(out=out, corpus=str(corpus), vocab_size=300, val_fraction=0.2, **fields)


def _decoded(out: Path) -> str:
    tokenizer = load_tokenizer(out)
    return "".join(tokenizer.decode(open_tokens(out, s).tolist(), skip_special_tokens=False) for s in ("train", "val"))


def test_planted_near_duplicates_are_removed_and_unique_documents_kept(tmp_path: Path) -> None:
    unique = texts(60, seed=7)
    rng = random.Random(8)
    copies = [near_copy(unique[i], rng) for i in range(0, 60, 6)]  # ten near-duplicates of ten documents
    corpus = write_jsonl(tmp_path / "docs.jsonl", unique + copies)
    manifest = build_dataset(_cfg(corpus, tmp_path / "out"), progress=False)
    names = sorted(int(d["relpath"].split(":")[1]) for d in manifest["documents"])
    assert names == list(range(1, 61))  # lines 1..60 (the originals) kept, 61..70 (the copies) gone
    assert manifest["filters"]["near_duplicates"] == 10 and manifest["filters"]["exact_duplicates"] == 0

    kept_all = build_dataset(_cfg(corpus, tmp_path / "all", dedup={"near_dup": False}), progress=False)
    assert len(kept_all["documents"]) == 70


def test_quality_filters_are_counted_per_filter(tmp_path: Path) -> None:
    good = texts(20, seed=9)
    bad = ["$#@!%^&*()[]{}<>|\\/~" * 20, "the same line again\n" * 30, "  \n\t\n", "ok"]
    corpus = write_jsonl(tmp_path / "docs.jsonl", good + bad)
    manifest = build_dataset(_cfg(corpus, tmp_path / "out", quality={"min_chars": 5}), progress=False)
    assert {k: manifest["filters"][k] for k in ("min_chars", "max_symbol_ratio", "max_repeated_lines")} == {
        "min_chars": 2, "max_symbol_ratio": 1, "max_repeated_lines": 1,
    }
    assert len(manifest["documents"]) == 20


def test_pii_scanner_finds_each_kind_and_checks_cards() -> None:
    for kind, text in _PII.items():
        redacted, counts = scan_pii(text, redact=True)
        assert counts == {kind: 1} and f"<{kind.upper()}>" in redacted, (kind, counts, redacted)
    assert scan_pii("card 4111 1111 1111 1112 expires", redact=True)[1] == {}  # fails the Luhn check
    assert scan_pii("x = 1234567890123", redact=False)[1] == {}


@pytest.mark.parametrize("mode", ["redact", "drop", "report"])
def test_planted_pii_is_redacted_dropped_or_reported(tmp_path: Path, mode: str) -> None:
    planted = [t + "\n" + p for t, p in zip(texts(5, seed=11), _PII.values(), strict=True)]
    corpus = write_jsonl(tmp_path / "docs.jsonl", texts(30, seed=10) + planted)
    manifest = build_dataset(_cfg(corpus, tmp_path / "out", pii={"mode": mode}), progress=False)
    assert manifest["pii"] == {"mode": mode, "matches": dict.fromkeys(sorted(_PII), 1)}
    assert manifest["sources"]["corpus"]["pii_documents"] == 5
    text = _decoded(tmp_path / "out")
    leaked = [p for p in ("alice.smith@example.com", "415-555-0132", "10.23.4.56", "4111 1111", "sk-abcdef")
              if p in text]
    if mode == "report":
        assert len(leaked) == 5 and len(manifest["documents"]) == 35
    else:
        assert leaked == []  # never written to the shards
        assert len(manifest["documents"]) == (35 if mode == "redact" else 30)
        assert ("<EMAIL>" in text) == (mode == "redact")
        assert manifest["filters"]["pii"] == (5 if mode == "drop" else 0)


def test_forget_removes_exactly_one_document(tmp_path: Path) -> None:
    corpus = write_jsonl(tmp_path / "docs.jsonl", texts(40, seed=12))
    out = tmp_path / "out"
    before = build_dataset(_cfg(corpus, out), progress=False)
    old = {s: np.array(open_tokens(out, s)) for s in ("train", "val")}
    victim = [d for d in before["documents"] if d["split"] == "train"][5]
    start = sum(d["tokens"] + 1 for d in before["documents"][: before["documents"].index(victim)]
                if d["split"] == "train")

    result = CliRunner().invoke(app, ["data", "forget", str(out), victim["sha256"]])
    assert result.exit_code == 0 and victim["relpath"] in result.output, result.output

    after = verify_data_dir(out)
    assert [d for d in before["documents"] if d != victim] == after["documents"]
    assert after["deletions"][0] | {"at": None} == {
        "relpath": victim["relpath"], "sha256": victim["sha256"], "split": "train", "tokens": victim["tokens"],
        "source": "corpus", "at": None,
    }
    expected = np.concatenate([old["train"][:start], old["train"][start + victim["tokens"] + 1 :]])
    assert np.array_equal(np.array(open_tokens(out, "train")), expected)
    assert np.array_equal(np.array(open_tokens(out, "val")), old["val"])  # the other split is untouched
    assert after["splits"]["train"]["tokens"] == len(expected)
    assert json.loads((out / "manifest.json").read_text())["files"]["val.bin"] == before["files"]["val.bin"]
    with pytest.raises(UserError, match="no document"):
        forget_document(out, victim["relpath"])


def test_a_forgotten_document_stays_out_of_every_later_build(tmp_path: Path) -> None:
    docs = texts(40, seed=13)
    corpus = write_jsonl(tmp_path / "docs.jsonl", docs)
    out = tmp_path / "out"
    before = build_dataset(_cfg(corpus, out), progress=False)
    victim = [d for d in before["documents"] if d["split"] == "train"][3]
    victim_text = docs[int(victim["relpath"].split(":")[1]) - 1]
    deletion = forget_document(out, victim["relpath"])

    assert build_dataset(_cfg(corpus, out), progress=False)["reused"]  # same input: nothing to rebuild
    # the input changes (one more document, and a copy of the forgotten one under another name) but still holds it
    write_jsonl(corpus, [*docs, *texts(1, seed=14), victim_text])
    after = build_dataset(_cfg(corpus, out), progress=False)
    assert not after["reused"]
    assert victim["sha256"] not in {d["sha256"] for d in after["documents"]}
    assert len(after["documents"]) == len(before["documents"])  # 40 - 1 forgotten + 1 new; the copy is out too
    # the copy falls as an exact duplicate of the original (same task) or as forgotten itself (another task)
    assert after["filters"]["forgotten"] + after["filters"]["exact_duplicates"] == 2
    assert after["filters"]["forgotten"] >= 1 and after["deletions"] == [deletion]
    assert victim_text not in _decoded(out)
    forget_document(out, after["documents"][0]["sha256"])  # a second forget keeps the first one on record
    assert [d["sha256"] for d in verify_data_dir(out)["deletions"]] == [victim["sha256"],
                                                                      after["documents"][0]["sha256"]]
