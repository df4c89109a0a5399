"""Reading a built data dir: the manifest, its integrity checks, token memmaps and the tokenizer.

A data dir holds tokenizer.json, tokenizer_config.json, train.bin, val.bin and manifest.json. The manifest is
written last, and records the size and sha256 of every other file, so a truncated or altered file is caught here
with an error that names it, instead of silently training on garbage.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from autarky.data.tokenizer import TOKENIZER_CONFIG_FILE, TOKENIZER_FILE
from autarky.data.tokenizer import shard_dtype as shard_dtype
from autarky.errors import UserError

MANIFEST_FILE = "manifest.json"
# The `data forget` records of a data dir. Not rebuilt by a build: every build of the dir leaves them out again.
FORGOTTEN_FILE = "forgotten.json"
FORMAT = "autarky-data/1"
SPLITS = ("train", "val")
_REQUIRED_KEYS = ("format", "fingerprint", "vocab_size", "dtype", "files", "splits", "documents", "config")


def shard_file(split: str) -> str:
    return f"{split}.bin"


TRACKED_FILES = (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, *(shard_file(s) for s in SPLITS))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _rebuild_hint(data_dir: Path) -> str:
    return f"rebuild it with `autarky data build --out {data_dir}` and the options it was built with"


def _well_formed(manifest: object) -> bool:
    if not isinstance(manifest, dict) or any(key not in manifest for key in _REQUIRED_KEYS):
        return False
    files, splits = manifest["files"], manifest["splits"]
    return (
        isinstance(files, dict)
        and all(
            isinstance(files.get(name), dict)
            and isinstance(files[name].get("bytes"), int)
            and isinstance(files[name].get("sha256"), str)
            for name in TRACKED_FILES
        )
        and isinstance(splits, dict)
        and all(isinstance(splits.get(s), dict) and isinstance(splits[s].get("tokens"), int) for s in SPLITS)
        and isinstance(manifest["vocab_size"], int)
        and manifest["dtype"] in ("uint16", "uint32")
    )


def read_manifest(data_dir: str | Path) -> dict:
    """The parsed manifest.json of `data_dir`, checked for shape but not against the files (cheap)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(
            f"data dir {data_dir} does not exist; build one with `autarky data build --out {data_dir}`"
        )
    path = data_dir / MANIFEST_FILE
    if not path.is_file():
        raise UserError(
            f"{path} is missing, so {data_dir} is not a (complete) data dir; {_rebuild_hint(data_dir)}"
        )
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path} is not valid JSON; {_rebuild_hint(data_dir)}") from None
    if not _well_formed(manifest):
        raise UserError(f"{path} is not an autarky data manifest; {_rebuild_hint(data_dir)}")
    if manifest["format"] != FORMAT:
        raise UserError(
            f"{path} has format {manifest['format']!r}, expected {FORMAT!r}; {_rebuild_hint(data_dir)}"
        )
    return manifest


def read_forgotten(data_dir: Path) -> list[dict]:
    """The deletions `autarky data forget` recorded in `data_dir` ([] if none)."""
    path = data_dir / FORGOTTEN_FILE
    try:
        records = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path} is not valid JSON; restore it (it lists the documents `data forget` removed)") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) and {"relpath", "sha256"} <= r.keys()
                                                for r in records):
        raise UserError(f"{path} is not a list of forgotten documents; restore it from a backup")
    return records


def _check_file(data_dir: Path, name: str, expected: dict, *, hash_it: bool) -> None:
    path = data_dir / name
    if not path.is_file():
        raise UserError(f"{path} is missing; {_rebuild_hint(data_dir)}")
    size = path.stat().st_size
    if size != expected["bytes"]:
        raise UserError(
            f"{path} is {size} bytes but the manifest says {expected['bytes']} (truncated or altered); "
            + _rebuild_hint(data_dir)
        )
    if hash_it and sha256_file(path) != expected["sha256"]:
        raise UserError(
            f"{path} does not match its sha256 in the manifest (altered or corrupt); {_rebuild_hint(data_dir)}"
        )


def verify_data_dir(data_dir: str | Path, *, hash_files: bool = True) -> dict:
    """The manifest of `data_dir` after checking every file's size (and sha256 unless hash_files=False).

    Raises UserError naming the first missing, truncated or altered file.
    """
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    for name in TRACKED_FILES:
        _check_file(data_dir, name, manifest["files"][name], hash_it=hash_files)
    return manifest


def open_tokens(data_dir: str | Path, split: str, *, verify: bool = True) -> np.memmap:
    """A read-only memmap of `split`'s token ids ("train" or "val"); documents end with the <|endoftext|> id.

    verify=True hashes every file of the data dir first; verify=False still checks sizes.
    """
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    data_dir = Path(data_dir)
    manifest = verify_data_dir(data_dir, hash_files=verify)
    tokens = manifest["splits"][split]["tokens"]  # never 0: the build refuses empty splits
    return np.memmap(
        data_dir / shard_file(split), dtype=np.dtype(manifest["dtype"]), mode="r", shape=(tokens,)
    )


def load_tokenizer(data_dir: str | Path) -> Tokenizer:
    """The data dir's `tokenizers.Tokenizer` (the same file `transformers.AutoTokenizer` loads)."""
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    _check_file(data_dir, TOKENIZER_FILE, manifest["files"][TOKENIZER_FILE], hash_it=True)
    return Tokenizer.from_file(str(data_dir / TOKENIZER_FILE))


def vocab_size_of(data_dir: str | Path) -> int:
    """The tokenizer's vocabulary size as recorded in the manifest (a model trained on this data needs ≥ this)."""
    return int(read_manifest(data_dir)["vocab_size"])
