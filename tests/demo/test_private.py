"""The private-data section's pieces: training examples disjoint from the spreadsheet suite (by construction and
by hash), chat records in the suite's format, the gateway config with the adapter as the spreadsheet candidate,
and the routing-table reader the section prints from."""

import json
from pathlib import Path

import pytest

from autarky.contracts.routes import Candidate, RoutingTable, TaskRoute, write_routing_table
from autarky.demo import private
from autarky.demo.operate import TASKS, write_gateway_config
from autarky.errors import UserError
from autarky.evals.generators import private_sheets, spreadsheet
from autarky.evals.suite import load_suite
from autarky.gateway.config import load_config
from autarky.gateway.router import Router
from autarky.gateway.routes import RoutesWatcher

PORTS = {"nano": 18001, "smollm2": 18002, "gateway": 18003, "gateway_ss": 18004}


@pytest.fixture(scope="module")
def eval_items() -> list[dict]:
    return load_suite("spreadsheet").items


def test_examples_share_no_sheet_or_question_with_the_suite(eval_items: list[dict]) -> None:
    train = private_sheets.examples(300, eval_items)
    assert len(train) == 300
    assert private_sheets.overlap(train, eval_items) == {"pairs": 0, "sheets": 0}
    # the generator's own view of the suite is the bundled file's
    assert private_sheets.overlap(train, spreadsheet.items()) == {"pairs": 0, "sheets": 0}


def test_overlap_catches_an_evaluation_item(eval_items: list[dict]) -> None:
    train = private_sheets.examples(20, eval_items) + [eval_items[7]]
    assert private_sheets.overlap(train, eval_items) == {"pairs": 1, "sheets": 1}


def test_a_sheet_equal_to_an_evaluation_sheet_is_skipped() -> None:
    rows = spreadsheet.random_rows(__import__("random").Random(private_sheets.SEED), 5)
    held_out = [{"sheet": [spreadsheet.HEADER, *rows], "prompt": "p"}]
    train = private_sheets.examples(30, held_out)
    assert private_sheets.overlap(train, held_out)["sheets"] == 0


def test_examples_are_deterministic_and_in_the_suite_format(eval_items: list[dict]) -> None:
    a, b = private_sheets.examples(50, eval_items), private_sheets.examples(50, eval_items)
    assert a == b
    record = private_sheets.chat_record(a[0])
    roles = [m["role"] for m in record["messages"]]
    assert roles == ["system", "user", "assistant"]
    assert record["messages"][0]["content"] == load_suite("spreadsheet").config.system
    assert record["messages"][2]["content"].startswith("=")
    assert record["messages"][1]["content"].startswith("Here is a spreadsheet")


def test_write_jsonl(tmp_path: Path, eval_items: list[dict]) -> None:
    path = private_sheets.write_jsonl(tmp_path / "d" / "sheets.jsonl", private_sheets.examples(5, eval_items))
    lines = path.read_text().splitlines()
    assert len(lines) == 5 and all("messages" in json.loads(line) for line in lines)


def test_training_data_check_passes_for_the_bundled_suite(tmp_path: Path) -> None:
    path, n, overlap = private.write_training_data(private.PrivateSettings(workdir=tmp_path, examples=40))
    assert n == 40 and overlap == {"pairs": 0, "sheets": 0} and path.exists()


def test_finetune_args_are_a_lora_run_of_smollm2(tmp_path: Path) -> None:
    settings = private.PrivateSettings(workdir=tmp_path, steps=7, rank=8)
    args = [str(a) for a in private.finetune_args(settings, tmp_path / "x.jsonl")]
    assert args[0] == "finetune"
    assert args[args.index("--base") + 1] == "smollm2" and args[args.index("--method") + 1] == "lora"
    assert args[args.index("--steps") + 1] == "7" and args[args.index("--lora-rank") + 1] == "8"


def test_the_adapter_is_a_spreadsheet_candidate_only(tmp_path: Path) -> None:
    config = load_config(write_gateway_config(tmp_path / "g.toml", PORTS, False, adapter=True))
    router = Router(config, RoutesWatcher(None))
    for task in TASKS:
        models = [t.model for t in router.decide(f"task:{task}", team="product").targets]
        assert (private.ADAPTER in models) == (task == private.TASK), (task, models)
        assert models[-1] == "partner-mini"
    assert config.models[private.ADAPTER].provider == "open-weights"


def test_route_reader(tmp_path: Path) -> None:
    def cand(model: str, score: float) -> Candidate:
        return Candidate(model=model, provider="p", score=score, ci_low=0, ci_high=1, usd_per_1k_tokens=0,
                         p50_latency_ms=1, in_house=True)

    path = write_routing_table(RoutingTable.of([TaskRoute(task=private.TASK, candidates=[cand("sheets", 0.6),
                                                                                         cand("smollm2", 0.1)])]),
                               tmp_path / "routes.toml")
    assert [c.model for c in private._route(path)] == ["sheets", "smollm2"]
    empty = write_routing_table(RoutingTable.of([]), tmp_path / "empty.toml")
    with pytest.raises(UserError):
        private._route(empty)


class _FakeRunner:
    """Answers the CLI calls `decide` makes with canned JSON, and records them."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(file=__import__("io").StringIO(), width=200)
        self.calls: list[list[str]] = []

    def section(self, title: str):  # noqa: ANN201
        import contextlib

        return contextlib.nullcontext()

    def run(self, args: list, capture: bool = False) -> str:
        args = [str(a) for a in args]
        self.calls.append(args)
        if args[:2] == ["eval", "leaderboard"]:
            return json.dumps([{"model": m, "suite": "spreadsheet", "mean": s, "n": 24}
                               for m, s in (("sheets", 0.5), ("smollm2", 0.0), ("partner-mini", 0.0))]
                              + [{"model": "sheets", "suite": "chat-qa", "mean": 0.9, "n": 4}])
        if args[:2] == ["eval", "compare"]:
            return json.dumps([{"suite": "spreadsheet", "p_value": 0.0001 if args[3] == "smollm2" else 0.0002}])
        return ""


def test_decide_reads_scores_and_p_values(tmp_path: Path) -> None:
    runner, figures = _FakeRunner(), private.PrivateFigures()
    private.decide(runner, private.PrivateSettings(workdir=tmp_path, eval_limit=24), figures,
                   "http://127.0.0.1:1/v1", tmp_path / "gateway.toml", "KEY")
    run = runner.calls[0]
    assert run[:2] == ["eval", "run"] and run[run.index("--limit") + 1] == "24"
    assert run[run.index("--max-tokens-cap") + 1] == "36" and run[run.index("--suite") + 1] == "spreadsheet"
    assert figures.scores == {"sheets": (0.5, 24), "smollm2": (0.0, 24), "partner-mini": (0.0, 24)}
    assert figures.p_values == {"smollm2": 0.0001, "partner-mini": 0.0002}
    assert "sheets" in runner.console.file.getvalue()
