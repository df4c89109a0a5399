"""Building a data dir: manifest integrity, corruption detection, reuse, and atomic replacement."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from rich.progress import Progress

from autarky.data import DataConfig, build_dataset, open_tokens, verify_data_dir, vocab_size_of
from autarky.data import build as build_module
from autarky.data.build import _write_shard
from autarky.data.manifest import shard_dtype
from autarky.data.sources import Document
from autarky.data.tokenizer import train_tokenizer
from autarky.errors import UserError


@pytest.fixture
def data_copy(tiny_data_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the session data dir, free to damage."""
    return Path(shutil.copytree(tiny_data_dir, tmp_path / "data"))


def _config(corpus: Path, out: Path) -> DataConfig:
    # json/*.py: five files (~50 kB) so each rebuild takes a fraction of a second; json/encoder.py is validation
    return DataConfig(out=out, corpus=str(corpus), glob="json/*.py", vocab_size=300, val_fraction=0.2)


def test_manifest_records_every_file_document_and_count(tiny_data_dir: Path, tiny_corpus_dir: Path) -> None:
    manifest = verify_data_dir(tiny_data_dir)
    for name, info in manifest["files"].items():
        data = (tiny_data_dir / name).read_bytes()
        assert info == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert set(manifest["files"]) == {"tokenizer.json", "tokenizer_config.json", "train.bin", "val.bin"}
    assert manifest["tokenizer_sha256"] == manifest["files"]["tokenizer.json"]["sha256"]
    assert manifest["dtype"] == "uint16" and manifest["vocab_size"] == vocab_size_of(tiny_data_dir) == 512
    docs = manifest["documents"]
    assert sorted(d["relpath"] for d in docs) == sorted(
        p.relative_to(tiny_corpus_dir).as_posix() for p in tiny_corpus_dir.rglob("*.py")
    )
    for doc in docs:
        text = (tiny_corpus_dir / doc["relpath"]).read_bytes()
        assert doc["sha256"] == hashlib.sha256(text).hexdigest() and doc["tokens"] > 0
    for split in ("train", "val"):
        in_split = [d for d in docs if d["split"] == split]
        tokens = open_tokens(tiny_data_dir, split)
        assert isinstance(tokens, np.memmap) and tokens.dtype == np.uint16
        assert len(tokens) == manifest["splits"][split]["tokens"] == sum(d["tokens"] + 1 for d in in_split)
        assert manifest["splits"][split]["documents"] == len(in_split) > 0
        assert int(tokens.max()) < manifest["vocab_size"]
    prov = manifest["provenance"]
    assert prov["source_kind"] == "folder" and prov["source_root"] == str(tiny_corpus_dir.resolve())
    assert prov["python"] and manifest["config"]["vocab_size"] == 512


@pytest.mark.parametrize("name", ["train.bin", "val.bin", "tokenizer.json"])
def test_truncated_file_is_detected_even_without_hashing(data_copy: Path, name: str) -> None:
    path = data_copy / name
    path.write_bytes(path.read_bytes()[:-2])
    for check in (lambda: verify_data_dir(data_copy), lambda: verify_data_dir(data_copy, hash_files=False)):
        with pytest.raises(UserError, match=rf"{name}.*truncated.*autarky data build"):
            check()


@pytest.mark.parametrize("name", ["train.bin", "val.bin", "tokenizer_config.json"])
def test_flipped_byte_is_detected_by_hash(data_copy: Path, name: str) -> None:
    path = data_copy / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    verify_data_dir(data_copy, hash_files=False)  # same size: only the hash can tell
    with pytest.raises(UserError, match=rf"{name} does not match its sha256.*rebuild"):
        verify_data_dir(data_copy)
    if name.endswith(".bin"):
        with pytest.raises(UserError, match=name):
            open_tokens(data_copy, name.removesuffix(".bin"))


def test_missing_or_broken_manifest_and_files(data_copy: Path, tiny_data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        verify_data_dir(tmp_path / "nowhere")
    (data_copy / "val.bin").unlink()
    with pytest.raises(UserError, match=r"val\.bin is missing"):
        open_tokens(data_copy, "train", verify=False)
    (data_copy / "manifest.json").write_text("{ half a manifest")
    with pytest.raises(UserError, match="not valid JSON"):
        verify_data_dir(data_copy)
    (data_copy / "manifest.json").write_text(json.dumps({"hello": "world"}))
    with pytest.raises(UserError, match="not an autarky data manifest"):
        vocab_size_of(data_copy)
    manifest = json.loads((tiny_data_dir / "manifest.json").read_text())
    del manifest["files"]["val.bin"]["sha256"]
    (data_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="not an autarky data manifest"):
        verify_data_dir(data_copy)
    (data_copy / "manifest.json").unlink()
    with pytest.raises(UserError, match=r"manifest\.json is missing"):
        open_tokens(data_copy, "train")
    with pytest.raises(UserError, match="unknown split"):
        open_tokens(data_copy, "test")


def test_rerun_with_same_inputs_is_reused_and_changes_rebuild(tiny_corpus_dir: Path, tmp_path: Path) -> None:
    cfg = _config(tiny_corpus_dir, tmp_path / "out")
    first = build_dataset(cfg, progress=False)
    stamps = {p.name: p.stat().st_mtime_ns for p in cfg.out.iterdir()}
    again = build_dataset(cfg, progress=False)
    assert first["reused"] is False and again["reused"] is True
    assert again["fingerprint"] == first["fingerprint"]
    assert {p.name: p.stat().st_mtime_ns for p in cfg.out.iterdir()} == stamps  # nothing rewritten

    changed = build_dataset(cfg.model_copy(update={"vocab_size": 320}), progress=False)
    assert changed["reused"] is False and changed["vocab_size"] == 320
    # an edited document changes the fingerprint too
    edited = _config(Path(shutil.copytree(tiny_corpus_dir, tmp_path / "corpus")), cfg.out)
    (Path(edited.corpus) / "json" / "tool.py").write_text("print('edited')\n")
    assert build_dataset(edited, progress=False)["reused"] is False


def test_corrupt_data_dir_is_rebuilt_by_build(tiny_corpus_dir: Path, tmp_path: Path) -> None:
    cfg = _config(tiny_corpus_dir, tmp_path / "out")
    first = build_dataset(cfg, progress=False)
    (cfg.out / "train.bin").write_bytes(b"garbage")
    again = build_dataset(cfg, progress=False)
    assert again["reused"] is False and again["files"] == first["files"]  # same inputs → same bytes
    verify_data_dir(cfg.out)


def test_interrupted_rebuild_keeps_the_previous_data_dir(
    tiny_corpus_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _config(tiny_corpus_dir, tmp_path / "out")
    before = build_dataset(cfg, progress=False)

    real_write_shard = build_module._write_shard

    def crash_on_val(*args, **kwargs):
        if kwargs.get("split", args[-1]) == "val":
            raise KeyboardInterrupt
        return real_write_shard(*args, **kwargs)

    monkeypatch.setattr(build_module, "_write_shard", crash_on_val)
    with pytest.raises(KeyboardInterrupt):
        build_dataset(cfg.model_copy(update={"vocab_size": 333}), progress=False)
    assert verify_data_dir(cfg.out)["fingerprint"] == before["fingerprint"]
    assert sorted(p.name for p in cfg.out.iterdir()) == sorted([*before["files"], "manifest.json"])

    with pytest.raises(KeyboardInterrupt):
        build_dataset(cfg.model_copy(update={"out": tmp_path / "fresh"}), progress=False)
    assert not (tmp_path / "fresh").exists()  # a first build that dies leaves nothing behind


def test_out_dir_with_foreign_files_is_refused(tiny_corpus_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(UserError, match="not a data dir"):
        build_dataset(_config(tiny_corpus_dir, out), progress=False)
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]


def test_leftovers_of_a_killed_build_are_replaced(tiny_corpus_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / ".building").mkdir(parents=True)  # what SIGKILL mid-build leaves: staging, no manifest
    (out / ".building" / "train.bin").write_bytes(b"half")
    (out / "train.bin").write_bytes(b"old")
    with pytest.raises(UserError, match="manifest.json is missing"):
        verify_data_dir(out)
    build_dataset(_config(tiny_corpus_dir, out), progress=False)
    assert not (out / ".building").exists() and verify_data_dir(out)["vocab_size"] == 300


def test_shard_dtype_fits_the_vocabulary(tmp_path: Path) -> None:
    assert shard_dtype(512) == shard_dtype(65_536) == np.uint16
    assert shard_dtype(65_537) == shard_dtype(128_256) == np.uint32
    tokenizer = train_tokenizer(["abc abd"], vocab_size=300)
    docs = [Document.from_text("a", "abc abd"), Document.from_text("b", "x")]
    with Progress(disable=True) as bar:
        counts, info = _write_shard(tokenizer, docs, tmp_path / "s.bin", np.dtype(np.uint32), bar, "train")
    ids = np.fromfile(tmp_path / "s.bin", dtype=np.uint32)
    assert info["bytes"] == ids.nbytes and len(ids) == counts["a"] + counts["b"] + 2
    assert (
        ids[counts["a"]] == 0 and ids[-1] == 0 and tokenizer.decode(ids[: counts["a"]].tolist()) == "abc abd"
    )
