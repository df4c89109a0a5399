"""What `autarky data build` builds: `DataConfig` (CLI flags or a TOML data config) and its parts.

A build is a mixture of named sources with weights; the single-source CLI flags (--corpus, --glob) make a
mixture of one. Everything that changes the output bytes lives here, so the config is the build's fingerprint.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from autarky.data.sources import DEFAULT_GLOB, STDLIB
from autarky.errors import UserError
from autarky.model.chat import SPECIAL_TOKENS

# Here rather than in autarky.data.tokenizer, so that the CLI reads the config without importing tokenizers/numpy.
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)  # every byte plus the specials
MAX_VOCAB_SIZE = 262_144

_WEIGHT_TOLERANCE = 1e-6
# Config fields whose CLI option is not spelled after the field's path.
_OPTION_NAMES = {("pii", "mode"): "--pii"}


def _not_blank(cls: type, value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SourceConfig(_Frozen):
    """One named source of a mixture: 'stdlib', a folder (glob), or a .jsonl / .jsonl.zst / .parquet file."""

    name: str = Field(..., min_length=1, description="how the manifest and the cursor name this source")
    path: str = Field(..., description="'stdlib', a folder, or a .jsonl, .jsonl.zst or .parquet file")
    glob: str = Field(DEFAULT_GLOB, description="files to take from a folder source")
    weight: float = Field(1.0, gt=0.0, le=1.0, description="share of the mixture; the weights sum to 1")

    _glob_not_empty = field_validator("glob")(_not_blank)


class QualityConfig(_Frozen):
    """Per-document quality rules (Gopher/C4-like, kept lenient enough for source code); None turns one off."""

    min_chars: int = Field(1, ge=1, description="drop documents with fewer non-blank characters")
    max_symbol_ratio: float | None = Field(
        0.75, gt=0.0, le=1.0, description="drop documents whose share of non-alphanumeric, non-space chars is higher"
    )
    max_repeated_lines: float | None = Field(
        0.7, gt=0.0, le=1.0, description="drop documents whose share of duplicated non-blank lines is higher"
    )
    max_doc_mb: float = Field(16.0, gt=0.0, description="documents larger than this are split or skipped")
    oversized: Literal["split", "skip"] = Field("split", description="what to do with an oversized document")


class DedupConfig(_Frozen):
    """Exact (sha256) dedup always; MinHash LSH near-duplicate removal with FineWeb's defaults."""

    near_dup: bool = Field(True, description="remove near-duplicates across the whole corpus")
    ngram: int = Field(5, ge=1, description="words per shingle")
    bands: int = Field(14, ge=1, description="LSH bands")
    rows: int = Field(8, ge=1, description="MinHash rows per band")
    threshold: float = Field(
        0.7, gt=0.0, le=1.0, description="estimated Jaccard similarity at which an LSH candidate is a duplicate"
    )


class PiiConfig(_Frozen):
    mode: Literal["report", "redact", "drop"] = Field(
        "report", description="report counts only, redact matches, or drop documents with any match"
    )


class DataConfig(_Frozen):
    """What `autarky data build` builds; every field has a default except the output dir."""

    out: Path
    corpus: str = Field(STDLIB, description="'stdlib', a folder, or a .jsonl, .jsonl.zst or .parquet file")
    glob: str = Field(DEFAULT_GLOB, description="files to take from a folder corpus")
    sources: tuple[SourceConfig, ...] = Field((), description="a mixture; when given, corpus and glob are unused")
    vocab_size: int = Field(4096, ge=MIN_VOCAB_SIZE, le=MAX_VOCAB_SIZE)
    val_fraction: float = Field(0.05, gt=0.0, lt=1.0)
    max_mb: float | None = Field(
        None, gt=0.0, description="take a deterministic subset of about this many MB"
    )
    tokenizer_sample_mb: float = Field(
        8.0, gt=0.0, description="train the tokenizer on at most this much text"
    )
    tokenizer: str | None = Field(
        None, description="reuse this folder's tokenizer.json (a base model's) instead of training one"
    )
    task_mb: float = Field(32.0, gt=0.0, description="input per task; tasks depend on the input, not on workers")
    quality: QualityConfig = QualityConfig()
    dedup: DedupConfig = DedupConfig()
    pii: PiiConfig = PiiConfig()

    _glob_not_empty = field_validator("glob")(_not_blank)

    @model_validator(mode="after")
    def _mixture_is_sound(self) -> DataConfig:
        if self.sources:
            names = [s.name for s in self.sources]
            if len(set(names)) != len(names):
                raise ValueError(f"source names must be unique, got {names}")
            total = sum(s.weight for s in self.sources)
            if abs(total - 1.0) > _WEIGHT_TOLERANCE:
                raise ValueError(f"source weights must sum to 1, got {total:g}")
        return self

    def mixture(self) -> tuple[SourceConfig, ...]:
        """The sources of this build: the `sources` list, or the single --corpus source named 'corpus'."""
        return self.sources or (SourceConfig(name="corpus", path=self.corpus, glob=self.glob, weight=1.0),)

    @classmethod
    def create(cls, toml: Path | None = None, given: frozenset[str] = frozenset(), **fields: object) -> DataConfig:
        """Like DataConfig(**fields), but bad values raise one-line UserErrors that name what the user wrote: the
        CLI option, or for a value from the TOML file `toml` (every field but those `given` on the command line)
        its key there."""
        try:
            return cls(**fields)
        except ValidationError as e:
            problems = "; ".join(_problem(err, toml if err["loc"][:1] and err["loc"][0] not in given else None)
                                 for err in e.errors())  # fmt: skip
            raise UserError(f"bad data config{f' {toml}' if toml else ''}: {problems}") from None

    @classmethod
    def from_toml(cls, path: Path, **overrides: object) -> DataConfig:
        """A TOML data config (top-level fields, [[sources]], [quality], [dedup], [pii]) plus CLI overrides."""
        try:
            fields = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"data config {path} does not exist") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"data config {path} is not valid TOML ({e})") from None
        for source in fields.get("sources", []):
            # relative source paths are relative to the config file, so a config travels with its data
            if isinstance(source, dict) and isinstance(source.get("path"), str) and source["path"] != "stdlib":
                source["path"] = str(Path(path).parent / Path(source["path"]).expanduser())
        given = {k: v for k, v in overrides.items() if v is not None}
        return cls.create(Path(path), frozenset(given), **{**fields, **given})


def _problem(err: dict, toml: Path | None) -> str:
    """One validation error as `--option: message`, or as `key.path[0]: message` for a value from a TOML file."""
    loc, msg = tuple(err["loc"]), err["msg"].removeprefix("Value error, ")
    if not loc:
        return msg
    if toml is not None:
        return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).removeprefix(".") + f": {msg}"
    return f"{_OPTION_NAMES.get(loc, '--' + '-'.join(str(p) for p in loc).replace('_', '-'))}: {msg}"
