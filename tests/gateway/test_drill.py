"""The traffic driver against a gateway: the outage drill (stop the preferred model's server mid-burst; every
request is still served) and a product burst over tasks."""

import asyncio

from autarky.demo.drill import burst, run_burst
from autarky.demo.partners import Faults, make_app
from autarky.gateway.server import ServerThread


def test_outage_mid_burst_loses_no_request(make_gateway, faults):
    slow = Faults()
    slow.default["*"] = "latency:0.02"  # long enough a burst that the stop lands mid-way on a loaded box
    doomed = ServerThread(make_app(slow), log_level="critical").start()
    faults.default["small-up"] = "latency:0.02"
    gw, url = make_gateway(
        providers={"local2": {"base_url": doomed.url + "/v1"}},
        tasks={"inhouse": {"candidates": ["small2", "small"]}},
        breaker={"failure_threshold": 2, "cooldown_s": 30},
    )
    report = run_burst(url, n=200, concurrency=6, model="task:inhouse", midway=doomed.stop, midway_after=0.3)
    assert report.ok == 200, report.summary()
    assert report.by_model["small2"] >= 60 and report.by_model["small"] >= 10, report.summary()
    assert report.failovers >= 1
    assert gw.breakers["local2"].state == 1  # open: later requests skip the dead server without trying it


def test_product_burst_spreads_over_tasks_and_reports_each_request(make_gateway, faults):
    _, url = make_gateway(retry={"max_retries": 0}, breaker={"failure_threshold": 100})
    faults.script("gpt-up", "500", "500", "500")  # spreadsheet's first choice fails over to `small`
    seen: list[int] = []
    report = asyncio.run(burst(url, 12, 3, tasks=["spreadsheet", "inhouse", "nope"],
                               on_progress=lambda done, r: seen.append(done)))
    assert report.sent == 12 and sorted(seen) == list(range(1, 13))
    assert report.ok == 8 and report.errors == {"task_not_found": 4} and report.failed == 4
    assert report.failovers == 3 and report.by_model["small"] >= 4
    assert all(rid for rid, _ in report.results) and {s for _, s in report.results} == {200, 404}
