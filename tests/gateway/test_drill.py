"""The outage drill: stop the preferred model's server mid-burst; every request is still served."""

from autarky.gateway.drill import run_burst
from autarky.gateway.fake_upstream import Faults, make_app
from autarky.gateway.server import ServerThread


def test_outage_mid_burst_loses_no_request(make_gateway, faults):
    doomed = ServerThread(make_app(Faults()), log_level="critical").start()
    gw, url = make_gateway(
        providers={"local2": {"base_url": doomed.url + "/v1"}},
        tasks={"inhouse": {"candidates": ["small2", "small"]}},
        breaker={"failure_threshold": 2, "cooldown_s": 30},
    )
    report = run_burst(url, n=120, concurrency=6, model="task:inhouse", midway=doomed.stop, midway_after=0.4)
    print(report.summary())
    assert report.ok == 120, report.summary()
    assert report.by_model["small2"] >= 40 and report.by_model["small"] >= 20  # served by both, in that order
    assert report.failovers >= 1
    assert gw.breakers["local2"].state == 1  # open: later requests skip the dead server without trying it
