"""Corpus sources: folders, JSONL, the stdlib; de-duplication; the per-document split rule; subsets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autarky.data import DataConfig, build_dataset, is_validation_document
from autarky.data.sources import load_corpus, stdlib_root, take_subset
from autarky.errors import UserError


def _write(folder: Path, files: dict[str, str]) -> Path:
    for relpath, text in files.items():
        (folder / relpath).parent.mkdir(parents=True, exist_ok=True)
        (folder / relpath).write_text(text)
    return folder


def test_folder_source_follows_glob_and_names_documents_by_relative_path(tmp_path: Path) -> None:
    _write(
        tmp_path, {"a.py": "x = 1\n", "pkg/b.py": "y = 2\n", "notes.txt": "not python\n", "pkg/c.txt": "z\n"}
    )
    corpus = load_corpus(str(tmp_path))
    assert corpus.kind == "folder" and corpus.root == str(tmp_path.resolve())
    assert [d.relpath for d in corpus.documents] == ["a.py", "pkg/b.py"]
    assert [d.relpath for d in load_corpus(str(tmp_path), "**/*.txt").documents] == ["notes.txt", "pkg/c.txt"]


def test_exact_duplicates_are_removed_keeping_the_first_path(tmp_path: Path) -> None:
    _write(tmp_path, {"b.py": "same = 1\n", "a.py": "same = 1\n", "c.py": "same = 1 \n", "empty.py": "  \n"})
    corpus = load_corpus(str(tmp_path))
    assert [d.relpath for d in corpus.documents] == ["a.py", "c.py"]  # near-duplicates stay; blank files go
    assert corpus.duplicates == 1


def test_non_utf8_files_are_skipped_and_reported(tmp_path: Path) -> None:
    _write(tmp_path, {"ok.py": "print('ok')\n"})
    (tmp_path / "latin1.py").write_bytes("s = 'caf\xe9'\n".encode("latin-1"))
    corpus = load_corpus(str(tmp_path))
    assert [d.relpath for d in corpus.documents] == ["ok.py"] and corpus.skipped == ["latin1.py"]


def test_jsonl_source_names_documents_by_id_or_line(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    lines = [
        {"text": "first"},
        {"text": "second", "id": "doc-2"},
        {"text": "first"},
        {"text": "third", "meta": 1},
    ]
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n\n")
    corpus = load_corpus(str(path))
    assert corpus.kind == "jsonl"
    assert [(d.relpath, d.text) for d in corpus.documents] == [
        ("docs.jsonl:1", "first"),
        ("docs.jsonl:4", "third"),
        ("docs.jsonl:doc-2", "second"),
    ]
    assert corpus.duplicates == 1


@pytest.mark.parametrize("line", ['{"content": "x"}', '{"text": 3}', '["text"]', "{not json"])
def test_jsonl_without_text_is_a_user_error(tmp_path: Path, line: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n' + line + "\n")
    with pytest.raises(UserError, match=r"bad\.jsonl:2"):
        load_corpus(str(path))


def test_stdlib_source_is_the_standard_library_without_junk() -> None:
    corpus = load_corpus("stdlib", "**/*.py")
    names = {d.relpath for d in corpus.documents}
    assert corpus.kind == "stdlib" and Path(corpus.root) == stdlib_root()
    assert {"os.py", "json/decoder.py", "asyncio/tasks.py"} <= names
    assert not any("site-packages" in n or "__pycache__" in n or "tokenizedata" in n for n in names)
    assert not any(n.startswith("_sysconfigdata") or n.startswith("pydoc_data") for n in names)
    assert 15e6 < sum(d.n_bytes for d in corpus.documents) < 60e6


def test_split_rule_is_a_pure_function_of_the_path() -> None:
    names = [f"pkg/module_{i}.py" for i in range(4000)]
    val = [n for n in names if is_validation_document(n, 0.1)]
    assert 0.08 < len(val) / len(names) < 0.12
    assert val == [n for n in reversed(names) if is_validation_document(n, 0.1)][::-1]
    # a larger fraction only adds documents to validation, never moves one out
    assert set(val) <= {n for n in names if is_validation_document(n, 0.3)}


def test_document_split_does_not_depend_on_the_rest_of_the_corpus(
    tmp_path: Path, tiny_corpus_dir: Path
) -> None:
    files = sorted(p.relative_to(tiny_corpus_dir).as_posix() for p in tiny_corpus_dir.rglob("*.py"))
    small = _write(tmp_path / "small", {f: (tiny_corpus_dir / f).read_text() for f in files[::2]})
    big_cfg = DataConfig(
        out=tmp_path / "big-out", corpus=str(tiny_corpus_dir), vocab_size=300, val_fraction=0.3
    )
    small_cfg = big_cfg.model_copy(update={"out": tmp_path / "small-out", "corpus": str(small)})
    big = {d["relpath"]: d["split"] for d in build_dataset(big_cfg, progress=False)["documents"]}
    small_docs = build_dataset(small_cfg, progress=False)["documents"]
    assert len(small_docs) < len(big)
    assert all(big[d["relpath"]] == d["split"] for d in small_docs)
    assert all(
        d["split"] == ("val" if is_validation_document(d["relpath"], 0.3) else "train") for d in small_docs
    )


def test_subset_is_deterministic_and_nested(tiny_corpus_dir: Path) -> None:
    docs = load_corpus(str(tiny_corpus_dir)).documents
    small, large = take_subset(docs, 100_000), take_subset(docs, 250_000)
    assert take_subset(list(reversed(docs)), 100_000) == small
    assert {d.relpath for d in small} < {d.relpath for d in large}
    assert 100_000 <= sum(d.n_bytes for d in small) < 100_000 + max(d.n_bytes for d in docs)
    assert take_subset(docs, None) == docs


def test_folder_source_never_follows_a_symlink_out_of_the_root(tmp_path: Path) -> None:
    outside = _write(tmp_path / "outside", {"secret.py": "key = 'hunter2'\n", "pkg/more.py": "token = 1\n"})
    root = _write(tmp_path / "corpus", {"a.py": "x = 1\n", "inner.py": "y = 2\n"})
    (root / "leak.py").symlink_to(outside / "secret.py")
    (root / "linked").symlink_to(outside / "pkg", target_is_directory=True)
    (root / "alias.py").symlink_to(root / "inner.py")  # inside the root: fine
    corpus = load_corpus(str(root))
    assert [d.relpath for d in corpus.documents] == ["a.py", "alias.py"]  # inner.py: alias.py's duplicate
    assert corpus.duplicates == 1
    assert not any("hunter2" in d.text or "token" in d.text for d in corpus.documents)


@pytest.mark.parametrize("pattern", ["../outside/*.py", "../**/*.py", "/etc/*"])
def test_a_glob_cannot_leave_the_root(tmp_path: Path, pattern: str) -> None:
    _write(tmp_path / "outside", {"secret.py": "key = 'hunter2'\n"})
    root = _write(tmp_path / "corpus", {"a.py": "x = 1\n"})
    with pytest.raises(UserError, match="glob"):
        load_corpus(str(root), pattern)


def test_deeply_nested_jsonl_line_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.jsonl"
    path.write_text('{"text": "ok"}\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(UserError, match=r"deep\.jsonl:2.*nested"):
        load_corpus(str(path))


def test_non_utf8_jsonl_line_is_a_user_error_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "\xff\xfe"}\n')
    with pytest.raises(UserError, match=r"bad\.jsonl:2.*UTF-8"):
        load_corpus(str(path))
