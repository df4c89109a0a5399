"""Prometheus metrics under vLLM's names, so existing vLLM dashboards read an autarky server unchanged.

Each server gets its own CollectorRegistry (tests run several servers in one process); each model is a
`model_name` label, as in vLLM.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from autarky.serve.blocks import PoolStats

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
                   80.0)


class ServeMetrics:
    """The metric children of one model; the engine thread updates them (prometheus_client is thread-safe)."""

    def __init__(self, family: MetricFamilies, model_name: str) -> None:
        self.time_to_first_token = family.ttft.labels(model_name=model_name)
        self.inter_token_latency = family.itl.labels(model_name=model_name)
        self.time_per_output_token = family.tpot.labels(model_name=model_name)
        self.e2e_latency = family.e2e.labels(model_name=model_name)
        self.num_running = family.running.labels(model_name=model_name)
        self.num_waiting = family.waiting.labels(model_name=model_name)
        self.prompt_tokens = family.prompt_tokens.labels(model_name=model_name)
        self.generation_tokens = family.generation_tokens.labels(model_name=model_name)
        self.request_success = family.success
        self.queue_time = family.queue_time.labels(model_name=model_name)
        self.prefix_cache_queries = family.prefix_cache_queries.labels(model_name=model_name)
        self.prefix_cache_hits = family.prefix_cache_hits.labels(model_name=model_name)
        self.num_preemptions = family.preemptions.labels(model_name=model_name)
        self._kv_usage = family.kv_usage.labels(model_name=model_name)
        self._blocks_used = family.blocks_used.labels(model_name=model_name)
        self._blocks_free = family.blocks_free.labels(model_name=model_name)

    def kv_cache(self, stats: PoolStats) -> None:
        self._kv_usage.set(stats.usage)
        self._blocks_used.set(stats.used)
        self._blocks_free.set(stats.blocks - stats.used)


class MetricFamilies:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r, label = self.registry, ["model_name"]
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Time to first token.", label,
                              buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("vllm:inter_token_latency_seconds", "Time between consecutive output tokens.", label,
                             buckets=LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("vllm:time_per_output_token_seconds", "Same as inter-token latency (older name).",
                              label, buckets=LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "End-to-end request latency.", label,
                             buckets=LATENCY_BUCKETS, registry=r)
        self.running = Gauge("vllm:num_requests_running", "Requests in the running batch.", label, registry=r)
        self.waiting = Gauge("vllm:num_requests_waiting", "Requests waiting to be admitted.", label, registry=r)
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prefill tokens processed.", label, registry=r)
        self.generation_tokens = Counter("vllm:generation_tokens", "Generated tokens.", label, registry=r)
        self.success = Counter("vllm:request_success", "Finished requests by finish reason.",
                               ["model_name", "finished_reason"], registry=r)
        self.queue_time = Histogram("vllm:request_queue_time_seconds", "Time from arrival to first scheduled.",
                                    label, buckets=LATENCY_BUCKETS, registry=r)
        self.prefix_cache_queries = Counter("vllm:prefix_cache_queries", "Prompt tokens looked up in the prefix "
                                            "cache.", label, registry=r)
        self.prefix_cache_hits = Counter("vllm:prefix_cache_hits", "Prompt tokens found in the prefix cache.",
                                         label, registry=r)
        self.preemptions = Counter("vllm:num_preemptions", "Sequences preempted for KV cache blocks (recomputed "
                                   "later).", label, registry=r)
        self.kv_usage = Gauge("vllm:kv_cache_usage_perc", "Fraction of KV cache blocks in use (1 = full).", label,
                              registry=r)
        self.blocks_used = Gauge("autarky:kv_cache_blocks_used", "KV cache blocks held by sequences.", label,
                                 registry=r)
        self.blocks_free = Gauge("autarky:kv_cache_blocks_free", "KV cache blocks free (cached prefixes included: "
                                 "they are evicted on demand).", label, registry=r)

    def for_model(self, model_name: str) -> ServeMetrics:
        return ServeMetrics(self, model_name)

    def render(self) -> bytes:
        return generate_latest(self.registry)
