"""Serving under load: ``slmops serve`` with 1, 4 and 8 concurrent clients, against llama.cpp's server.

    scripts/setup.sh && scripts/prepare_demo_model.sh                         # once
    .venv/bin/slmops run examples/01-finetune-lora.yaml examples/08-optimize-cpu.yaml   # once
    bench/setup_llamacpp.sh                                  # once, ~6 min: the llama.cpp peer
    .venv/bin/python bench/serve.py                          # every row
    .venv/bin/python bench/serve.py --clients 1,8 --requests 2 --max-tokens 32 --no-llamacpp   # quicker

Each server runs alone (one after the other, nothing else running), loaded as a user starts
it, with its thread count chosen where it runs (one per usable CPU); the clients are the
official ``openai`` client, streaming, greedy, each sending ``--requests`` requests one after
another with the eval rows of the demo's data as prompts (the same prompts for every
server, sent to ``/v1/completions`` as plain text so that every answer runs to the limit),
``--max-tokens`` new tokens at most:

* ``slmops cpu-int4``          -- ``slmops serve`` of example 08's int4 target, adapter merged;
* ``slmops cpu-int4-adapter``  -- the int4 target with the adapter separate, requests naming
  the adapter (one base, the adapter applied per request); ``--targets`` picks others, each
  asked for its adapter where it has one;
* ``llama.cpp Q4_0``           -- llama-cpp-python's OpenAI server (``python -m llama_cpp.server``,
  built by bench/setup_llamacpp.sh with its ``server`` extra) on the same merged model
  converted to GGUF and quantized to Q4_0 as bench/optimize.py does.  Skipped, saying so,
  where not installed.

First, the ceiling: onnxruntime-genai alone decoding batches of 1, 4 and 8 sequences of the
first target, loaded as the server loads it (what batching can give on this machine, with no
HTTP, no scheduler, no clients).

Per server and number of clients: aggregate tokens/s (completion tokens of every request over
the wall time of the round), p50/p95 time to first token and request latency, and the ratio
of the aggregate tokens/s to the same server's with one client.  The rounds run ``--repeats``
times, the client counts interleaved (1, 4, 8, 1, 4, 8...): a round with one client lasts two
seconds, and this machine's speed drifts by a fifth between minutes, so each row is the median
round's tokens/s (every round's figure beside it in the JSON) and the percentiles of all its
rounds' requests.  Rounds are ``--pause`` apart, longer than ``slmops serve`` remembers how
many clients came at once (a lone client right after 8 would wait for company that had gone).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from _measure import provenance  # noqa: E402

OUTPUT = REPO / "runs" / "smollm2-tone-cpu"
DATA = REPO / "examples" / "data" / "tone"
LLAMACPP_VENV = REPO / ".cache" / "bench" / "llamacpp-venv"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prompts(count: int) -> list[str]:
    """The eval rows' sentences, as the demo's users would send them."""
    rows = [json.loads(line) for line in (DATA / "eval.jsonl").read_text().splitlines() if line.strip()]
    texts = [str(next(iter(row.values()))) for row in rows]
    return [texts[i % len(texts)] for i in range(count)]


class Running:
    """A server process: started, waited for, stopped."""

    def __init__(self, command: list[str], port: int, log: Path, ready: str) -> None:
        self.port, self.log = port, log
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(command, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{command[0]} exited: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + ready, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"not ready in 300 s: {log.read_text()[-2000:]}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def one_request(client, model: str, text: str, max_tokens: int) -> dict:
    """One streamed completion: the text as the prompt, so that answers run to ``max_tokens``.

    A chat request to the tone model ends after one word; the completions endpoint with the
    plain sentence and ``min_tokens`` (llama.cpp's and slmops' extension) make every server
    decode exactly ``max_tokens``, which is what load measures.
    """
    started = time.perf_counter()
    first, tokens, chunks = None, None, 0
    stream = client.completions.create(
        model=model,
        prompt=text,
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"min_tokens": max_tokens},  # every server decodes the same number of tokens
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].text:
            chunks += 1
            if first is None:
                first = time.perf_counter() - started
        if getattr(chunk, "usage", None) is not None:
            tokens = chunk.usage.completion_tokens
    return {
        "ttft_s": first,
        "latency_s": time.perf_counter() - started,
        "tokens": tokens if tokens is not None else chunks,
    }


def load_round(client, model: str, clients: int, args: argparse.Namespace) -> dict:
    """One round: ``clients`` threads, each sending ``--requests`` requests one after another."""
    texts = prompts(clients * args.requests)

    def worker(n: int) -> list[dict]:
        return [
            one_request(client, model, texts[n * args.requests + i], args.max_tokens)
            for i in range(args.requests)
        ]

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        done = [r for rows in pool.map(worker, range(clients)) for r in rows]
    return {"wall_s": time.perf_counter() - started, "requests": done}


def load_rounds(url: str, model: str, args: argparse.Namespace) -> list[dict]:
    """Every client count's rounds, interleaved ``--repeats`` times, summarized per count."""
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600)
    one_request(client, model, prompts(1)[0], 4)  # warm-up: the first call's allocations are not the load's

    def round_of(clients: int) -> dict:
        time.sleep(args.pause)  # an idle server: it no longer expects the last round's clients
        return load_round(client, model, clients, args)

    return interleaved(args, round_of)


def interleaved(args: argparse.Namespace, round_of) -> list[dict]:
    """``round_of(count)`` for every client count, ``--repeats`` times in turn, summarized per count."""
    rounds: dict[int, list[dict]] = {c: [] for c in args.clients}
    for _ in range(args.repeats):
        for clients in args.clients:
            rounds[clients].append(round_of(clients))
    return [summarize(clients, rounds[clients]) for clients in args.clients]


def summarize(clients: int, rounds: list[dict]) -> dict:
    """A row: the median round's tokens/s (each round's listed), percentiles over every request."""
    done = [r for one in rounds for r in one["requests"]]
    rates = [round(sum(r["tokens"] for r in one["requests"]) / one["wall_s"], 1) for one in rounds]
    ttft = sorted(r["ttft_s"] for r in done if r["ttft_s"] is not None)
    latency = sorted(r["latency_s"] for r in done)
    return {
        "clients": clients,
        "requests": len(done),
        "tokens": sum(r["tokens"] for r in done),
        "tokens_per_s": round(statistics.median(rates), 1),
        "tokens_per_s_rounds": rates,
        "ttft_p50_ms": round(1000 * statistics.median(ttft), 1) if ttft else None,
        "ttft_p95_ms": round(1000 * percentile(ttft, 95), 1) if ttft else None,
        "latency_p50_s": round(statistics.median(latency), 2),
        "latency_p95_s": round(percentile(latency, 95), 2),
    }


def percentile(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def served_model(url: str) -> str:
    """The model id the clients ask for: the target's adapter where it has one, else its base."""
    with urllib.request.urlopen(url + "/v1/models", timeout=10) as response:
        return json.loads(response.read())["data"][-1]["id"]


def slmops_rows(args: argparse.Namespace, work: Path) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {}
    for target in args.targets:
        port = free_port()
        command = [
            str(REPO / ".venv" / "bin" / "slmops"),
            "serve",
            str(args.output),
            "--target",
            target,
            "--port",
            str(port),
            "--max-batch",
            str(max(args.clients)),
        ]
        server = Running(command, port, work / f"slmops-{target}.log", "/ready")
        try:
            model = served_model(server.url)
            rows[f"slmops {target}"] = load_rounds(server.url, model, args)
        finally:
            server.stop()
    return rows


def engine_rows(args: argparse.Namespace) -> dict[str, list[dict]]:
    """The ceiling: onnxruntime-genai decoding batches of N with no server around it (the first
    target, loaded as the server loads it: one thread per usable CPU).  A round is ``--requests``
    batches one after another, each a 20-token prompt's prefill and ``--max-tokens`` new tokens
    (a server prefills too), interleaved and repeated as the servers' rounds are."""
    from slmops_pipelines.steps.optimize.runtime import GenaiEngine

    target = args.targets[0]
    engine = GenaiEngine(args.output / "targets" / target)
    decode_batch(engine, args.clients[0], args.max_tokens)  # warm-up, not reported

    def round_of(batch: int) -> dict:
        started = time.perf_counter()
        walls = [decode_batch(engine, batch, args.max_tokens) for _ in range(args.requests)]
        done = [
            {"ttft_s": None, "latency_s": w, "tokens": args.max_tokens} for w in walls for _ in range(batch)
        ]
        return {"wall_s": time.perf_counter() - started, "requests": done}

    return {f"genai {target} (alone)": interleaved(args, round_of)}


def decode_batch(engine, batch: int, max_tokens: int) -> float:
    """Seconds to prefill ``batch`` 20-token prompts and decode ``max_tokens`` tokens for each."""
    import numpy as np

    started = time.perf_counter()
    length = 20 + max_tokens
    generator = engine.generator(length, min_length=length, search={"batch_size": batch})
    generator.append_tokens(np.asarray([[1, *range(100, 119)]] * batch, dtype=np.int32))
    while not generator.is_done():
        generator.generate_next_token()
    return time.perf_counter() - started


def llamacpp_rows(args: argparse.Namespace, work: Path) -> dict[str, list[dict]]:
    """llama.cpp's own OpenAI server on the merged model at Q4_0 (bench/optimize.py's conversion)."""
    import optimize

    python = args.llamacpp_venv / "bin" / "python"
    if not (args.llamacpp_venv / ".llamacpp-installed").exists():
        print(f"llama.cpp: not installed at {args.llamacpp_venv} (bench/setup_llamacpp.sh): skipped")
        return {}
    peer = argparse.Namespace(
        model=optimize.MODEL, adapter=optimize.ADAPTER, llamacpp_venv=args.llamacpp_venv, data=DATA
    )
    gguf = optimize.produce_llamacpp(peer, "int4", work, None)["llama.cpp Q4_0"]["gguf"]
    port = free_port()
    threads = str(len(os.sched_getaffinity(0)))
    command = [
        str(python),
        "-m",
        "llama_cpp.server",
        "--model",
        gguf,
        "--port",
        str(port),
        "--n_threads",
        threads,
    ]
    # interrupt_requests False: by default a new request interrupts the one running (it answers a
    # few tokens and stops); queued, every request gets its answer, as with slmops serve.
    command += ["--n_ctx", "2048", "--model_alias", "smollm2-tone", "--interrupt_requests", "False"]
    server = Running(command, port, work / "llamacpp.log", "/v1/models")
    try:
        return {"llama.cpp Q4_0": load_rounds(server.url, "smollm2-tone", args)}
    finally:
        server.stop()


def print_table(rows: dict[str, list[dict]]) -> None:
    head = f"{'server':<24} {'clients':>7} {'tok/s':>7} {'x1':>5} {'TTFT p50':>8} {'p95':>6} {'lat p50':>7} {'p95':>6}"
    print(head)
    for name, rounds in rows.items():
        single = rounds[0]["tokens_per_s"]
        for r in rounds:
            ratio = f"{r['tokens_per_s'] / single:.2f}" if single else "-"
            print(
                f"{name:<24} {r['clients']:>7} {r['tokens_per_s']:>7.1f} {ratio:>5} "
                f"{r['ttft_p50_ms'] or 0:>6.0f}ms {r['ttft_p95_ms'] or 0:>4.0f}ms "
                f"{r['latency_p50_s']:>6.2f}s {r['latency_p95_s']:>5.2f}s"
            )


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=OUTPUT, help="the OptimizeJob output (example 08's)")
    parser.add_argument(
        "--targets", default="cpu-int4,cpu-int4-adapter", help="the output's targets to serve"
    )
    parser.add_argument("--clients", default="1,4,8", help="concurrent clients per round")
    parser.add_argument("--requests", type=int, default=4, help="requests per client per round")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="rounds per client count, interleaved")
    parser.add_argument(
        "--pause", type=float, default=3.0,
        help="seconds between rounds: longer than slmops serve's memory of demand (2 s)",
    )  # fmt: skip
    parser.add_argument("--llamacpp-venv", type=Path, default=LLAMACPP_VENV)
    parser.add_argument("--no-llamacpp", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    args.clients = [int(c) for c in args.clients.split(",")]
    args.targets = args.targets.split(",")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    with tempfile.TemporaryDirectory(prefix="slmops-bench-serve-") as tmp:
        work = Path(tmp)
        rows = engine_rows(args)
        rows.update(slmops_rows(args, work))
        if not args.no_llamacpp:
            rows.update(llamacpp_rows(args, work))
    figures = provenance(argv, "onnxruntime-genai", "aiohttp", "openai")
    print(f"machine: {figures['machine']}")
    print(f"command: {figures['command']}")
    print_table(rows)
    if args.json:  # bench/results/serve.json: what docs/benchmarks.md's table is made from
        args.json.write_text(json.dumps({**figures, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
