"""Each grader on right and wrong answers; the sandbox's limits."""

from __future__ import annotations

import json

from autarky.evals.generators import python_functions, spreadsheet
from autarky.evals.graders import get_grader, normalize_answer
from autarky.evals.sandbox import run_python


def grade(name, item, output, extras=None):
    return get_grader(name).grade(item, output, extras or {})


def test_exact_match_normalizes():
    item = {"answers": ["Paris"]}
    assert grade("exact-match", item, "paris.").score == 1.0
    assert grade("exact-match", item, "  The Paris\nbecause...").score == 1.0
    assert grade("exact-match", item, "Lyon").score == 0.0
    assert grade("exact-match", {"answers": ["1,200"]}, "1200.0").score == 1.0
    assert grade("exact-match", {"answers": ["-3"]}, "3").score == 0.0
    assert normalize_answer("An Apple!") == "apple"
    sentence = grade("exact-match", item, "The capital of France is Paris.")
    assert sentence.score == 0.0 and sentence.metrics["contains_answer"] == 1.0


def test_python_tests_every_reference_passes_and_wrong_code_fails():
    items = {it["id"]: it for it in python_functions.items()}
    assert len(items) >= 50
    for entry in list(items)[:12]:  # all 55 take ~3 s; the rest are covered by the suite-wide check below
        assert grade("python-tests", items[entry], python_functions.reference_solution(entry)).score == 1.0, entry
    assert grade("python-tests", items["add"], "```python\ndef add(a, b):\n    return a - b\n```").score == 0.0
    assert grade("python-tests", items["add"], "no code at all").score == 0.0
    # Code that prints the pass marker it cannot know, then exits cleanly, still fails.
    sneaky = "import sys\nprint('AUTARKY-TESTS-PASSED')\nsys.exit(0)\n"
    assert grade("python-tests", items["add"], sneaky).score == 0.0


def test_python_tests_all_references_pass_in_one_sandbox_run():
    program = "\n\n".join(python_functions.reference_solution(e).strip("`").removeprefix("python\n")
                          + "\n" + it["tests"] for e, it in ((i["id"], i) for i in python_functions.items()))
    result = run_python(program + "\nprint('ALL OK')\n", timeout_s=30)
    assert result.ok and "ALL OK" in result.stdout, result.stderr[-500:]


def test_formula_grader_references_evaluate_to_expected_and_wrong_formulas_fail():
    items = spreadsheet.items()
    assert len(items) >= 50
    for item in items:
        assert grade("formula", item, item["reference"]).score == 1.0, item["id"]
    total = next(i for i in items if i["id"] == "sum-units")
    assert grade("formula", total, "```\n=SUM(C2:C13)\n```").score == 1.0
    assert grade("formula", total, "=SUM($C$2:$C$13)").score == 1.0
    assert grade("formula", total, "=SUM(C2:C12)").score == 0.0
    assert grade("formula", total, "You can use the formula =SUM(C2:C13) to add them up.").score == 1.0
    assert grade("formula", total, "Use =SUM(C2:C13).").score == 1.0
    for wrong in ("the total is 367", "=SUM(row 2) / ", "=SUM(Units)"):
        g = grade("formula", total, wrong)
        assert g.score == 0.0 and g.detail, wrong


def test_slides_structure():
    item = {"slides": 2, "required_terms": ["solar", "savings"]}
    good = {"slides": [{"title": "Why solar", "bullets": ["Lower bills", "Clean power"]},
                       {"title": "Savings", "bullets": ["Payback in 8 years", "Tax credits"]}]}
    assert grade("slides-structure", item, f"```json\n{json.dumps(good)}\n```").score == 1.0
    wrong_count = {"slides": good["slides"][:1]}
    g = grade("slides-structure", item, json.dumps(wrong_count))
    assert g.metrics["slide_count"] == 0.0 and g.score < 1.0
    long_title = {"slides": [{"title": "x" * 200, "bullets": ["a", "b"]}] * 2}
    assert grade("slides-structure", item, json.dumps(long_title)).metrics["titles"] == 0.0
    assert grade("slides-structure", item, "Slide 1: solar").score == 0.0
    one_bullet = {"slides": [{"title": "Solar savings", "bullets": ["only one"]}] * 2}
    assert grade("slides-structure", item, json.dumps(one_bullet)).metrics["bullets"] == 0.0


def test_code_completion_next_line():
    item = {"next_line": "return a + b", "body": "    return a + b\n"}
    g = grade("code-completion", item, "    return a + b", {"bits_per_byte": 1.5})
    assert g.score == 1.0 and g.metrics == {"bits_per_byte": 1.5}
    assert grade("code-completion", item, "    return a - b").score == 0.0
    assert grade("code-completion", item, "\n\n    return a + b\n    print(1)").score == 1.0  # first non-blank line


def test_sandbox_times_out():
    result = run_python("while True:\n    pass\n", timeout_s=1.0)
    assert result.timed_out and not result.ok


def test_sandbox_limits_memory():
    result = run_python("x = bytearray(2 * 1024 ** 3)\nprint('allocated')\n", memory_mb=256)
    assert not result.ok and "MemoryError" in result.stderr and "allocated" not in result.stdout


def test_sandbox_denies_network():
    code = ("import socket\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n"
            "s.connect(('127.0.0.1', 9))\n")
    result = run_python(code)
    assert not result.ok and "network access is disabled" in result.stderr


def test_sandbox_network_namespace_has_only_loopback():
    """Where `unshare -n` works, the child sees an empty network namespace: no interface but lo."""
    result = run_python("print(open('/proc/net/dev').read())\n")
    assert result.ok
    interfaces = {line.split(":")[0].strip() for line in result.stdout.splitlines() if ":" in line}
    with open("/proc/net/dev") as f:
        host = {line.split(":")[0].strip() for line in f if ":" in line}
    if result.network_namespace:
        assert interfaces == {"lo"}
    else:  # no namespaces on this host: the socket guard (test above) is what keeps the network out
        assert interfaces == host


def test_sandbox_runs_in_a_fresh_temporary_directory():
    result = run_python("import os\nprint(os.getcwd())\nprint(sorted(os.listdir('.')))\n")
    cwd, listing = result.stdout.splitlines()
    assert "autarky-sandbox-" in cwd and listing == "['_harness.py', 'main.py']"


def test_answer_match_credits_a_correct_answer_in_a_sentence_and_keeps_exact_match_as_a_metric():
    item = {"prompt": "What is the capital of France?", "answers": ["Paris"]}
    sentence = grade("answer-match", item, "The capital of France is Paris.")
    assert sentence.score == 1.0 and sentence.metrics == {"exact_match": 0.0}
    assert grade("answer-match", item, "Paris").metrics == {"exact_match": 1.0}
    for right in ("Answer: Paris", "```\nParis\n```", "I believe it is Paris, of course.", "PARIS!\nIt is on the Seine."):
        assert grade("answer-match", item, right).score == 1.0, right
    for wrong in ("Lyon", "Paris or Lyon", "Paris, Lyon, Marseille", "Paris and Lyon and Nice", "Parisian food", "",
                  "The capital of France is " + "a lovely old city " * 10 + "Paris."):
        assert grade("answer-match", item, wrong).score == 0.0, wrong
    arithmetic = {"prompt": "What is 56 divided by 8?", "answers": ["7"]}
    for right in ("7", "56 divided by 8 is 7.", "The answer is 7.0", "56 / 8 = 7"):
        assert grade("answer-match", arithmetic, right).score == 1.0, right
    for wrong in ("8", "7 or 8", "It is 7 (or 6).", "Between 6 and 9, say 7"):
        assert grade("answer-match", arithmetic, wrong).score == 0.0, wrong
    # An answer the question contains counts only as an exact match: echoing the question earns nothing.
    echo = {"prompt": "Which is larger, 3 or 9?", "answers": ["9"]}
    assert grade("answer-match", echo, "Which is larger, 3 or 9?").score == 0.0
    assert grade("answer-match", echo, "9").score == 1.0


def test_every_chat_qa_item_credits_its_answer_in_a_sentence_and_not_its_own_question():
    from autarky.evals.suite import load_suite

    suite = load_suite("chat-qa")
    assert suite.config.grader == "answer-match"
    for item in suite.items:
        answer = item["answers"][0]
        assert grade("answer-match", item, f"The answer is {answer}.").score == 1.0, item["id"]
        assert grade("answer-match", item, answer).metrics["exact_match"] == 1.0, item["id"]
        assert grade("answer-match", item, item["prompt"]).score == 0.0, item["id"]


def test_code_in_prose_or_fences_is_found():
    items = {it["id"]: it for it in python_functions.items()}
    prose = "Here is the function:\ndef add(a, b):\n    return a + b\nIt adds the two numbers."
    assert grade("python-tests", items["add"], prose).score == 1.0
    two_blocks = "Usage:\n```python\nprint(add(1, 2))\n```\nCode:\n```python\ndef add(a, b):\n    return a + b\n```"
    assert grade("python-tests", items["add"], two_blocks).score == 1.0
    assert grade("python-tests", items["add"], "def add(a, b):\n    return a - b\nSo simple.").score == 0.0
    total = next(i for i in spreadsheet.items() if i["id"] == "sum-units")
    assert grade("formula", total, "SUM(C2:C13)").score == 1.0  # the '=' left out
    assert grade("formula", total, "367").score == 0.0  # a number is not a formula
    line = {"next_line": "return a + b", "body": "    return a + b\n"}
    assert grade("code-completion", line, "```python\n    return a + b\n```").score == 1.0


# --- tool-call: the exact call, from the runner's envelope of the wire's tool_calls ------------------------

def _ticket_item() -> dict:
    from autarky.evals.generators.tool_use import TOOLS

    return {"id": "t", "prompt": "open a ticket", "tools": [TOOLS["create_ticket"], TOOLS["convert_currency"]],
            "expected": {"name": "create_ticket",
                         "arguments": {"title": "Export to CSV fails", "priority": "high", "tags": ["billing", "docs"]}},
            "unordered": ["tags"]}


def _calls(*calls: tuple[str, object]) -> str:
    from autarky.evals.formats import ToolCall, encode_calls

    return encode_calls("", [ToolCall(name, a if isinstance(a, str) else json.dumps(a)) for name, a in calls])


def test_tool_call_right_call_with_normalized_arguments():
    args = {"title": "  Export to CSV fails ", "priority": "high", "tags": ["docs", "billing"]}  # trimmed, any order
    g = grade("tool-call", _ticket_item(), _calls(("create_ticket", args)))
    assert (g.score, g.metrics["format_valid"], g.detail) == (1.0, 1.0, "exact call")


def test_tool_call_wrong_function_wrong_value_and_two_calls():
    item = _ticket_item()
    wrong_fn = grade("tool-call", item, _calls(("convert_currency", {"amount": 5, "from": "USD", "to": "EUR"})))
    assert (wrong_fn.score, wrong_fn.metrics["format_valid"]) == (0.0, 1.0)  # a valid call, of the wrong tool
    assert "expected only create_ticket" in wrong_fn.detail
    wrong_value = grade("tool-call", item, _calls(("create_ticket", {**item["expected"]["arguments"], "priority": "low"})))
    assert (wrong_value.score, wrong_value.metrics["format_valid"], wrong_value.detail) == (0.0, 1.0, "wrong priority")
    right = ("create_ticket", item["expected"]["arguments"])
    twice = grade("tool-call", item, _calls(right, right))
    assert (twice.score, twice.metrics["format_valid"]) == (0.0, 1.0)


def test_tool_call_bad_and_extra_arguments_are_not_format_valid():
    item = _ticket_item()
    args = item["expected"]["arguments"]
    for bad in ({**args, "priority": "HIGH"},  # not one of the enum's values: the schema decides
                {**args, "tags": "billing"},  # wrong type
                {k: v for k, v in args.items() if k != "tags"},  # a required argument missing
                {**args, "assignee": "omar"}):  # additionalProperties: false
        g = grade("tool-call", item, _calls(("create_ticket", bad)))
        assert (g.score, g.metrics["format_valid"]) == (0.0, 0.0), bad
        assert "schema" in g.detail
    broken = grade("tool-call", item, _calls(("create_ticket", '{"title": "Export')))
    assert broken.metrics["format_valid"] == 0.0 and "not JSON" in broken.detail
    undeclared = grade("tool-call", item, _calls(("delete_everything", {})))
    assert undeclared.metrics["format_valid"] == 0.0 and "not a declared tool" in undeclared.detail


def test_tool_call_extra_arguments_match_when_the_schema_allows_them():
    item = _ticket_item()
    item["tools"][0] = json.loads(json.dumps(item["tools"][0]))
    item["tools"][0]["function"]["parameters"]["additionalProperties"] = True
    g = grade("tool-call", item, _calls(("create_ticket", {**item["expected"]["arguments"], "assignee": "omar"})))
    assert (g.score, g.metrics["format_valid"], g.detail) == (0.0, 1.0, "wrong assignee")  # valid, not the call


def test_tool_call_text_instead_of_a_call_scores_zero():
    from autarky.evals.formats import encode_calls

    item = _ticket_item()
    looks_like_a_call = json.dumps({"name": "create_ticket", "arguments": item["expected"]["arguments"]})
    for output in (encode_calls(looks_like_a_call, []), looks_like_a_call, ""):
        g = grade("tool-call", item, output)
        assert (g.score, g.metrics["format_valid"]) == (0.0, 0.0)
        assert "text" in g.detail


def test_tool_call_numbers_by_value_and_times_as_instants():
    from autarky.evals.generators.tool_use import TOOLS

    item = {"tools": [TOOLS["convert_currency"], TOOLS["schedule_meeting"]],
            "expected": {"name": "convert_currency", "arguments": {"amount": 250, "from": "EUR", "to": "USD"}}}
    assert grade("tool-call", item, _calls(("convert_currency", {"amount": 250.0, "from": "EUR", "to": "USD"}))).score == 1.0
    meeting = {"attendees": ["ana@acme.example", "raj@acme.example"], "start": "2027-03-04T15:00:00",
               "duration_minutes": 45}
    item = {"tools": item["tools"], "expected": {"name": "schedule_meeting", "arguments": meeting}}
    same = {**meeting, "start": "2027-03-04T16:00:00+01:00", "attendees": ["Raj@acme.example", "ana@acme.example"]}
    assert grade("tool-call", {**item, "unordered": ["attendees"]}, _calls(("schedule_meeting", same))).score == 1.0
    assert grade("tool-call", item, _calls(("schedule_meeting", same))).score == 0.0  # order counts unless stated
    assert grade("tool-call", item, _calls(("schedule_meeting", {**meeting, "duration_minutes": 45.5}))).score == 0.0


def test_every_tool_use_item_is_graded_right_by_its_own_expected_call():
    from autarky.evals.suite import load_suite

    for item in load_suite("tool-use").items:
        expected = item["expected"]
        g = grade("tool-call", item, _calls((expected["name"], expected["arguments"])))
        assert g.score == 1.0, (item["id"], g.detail)
