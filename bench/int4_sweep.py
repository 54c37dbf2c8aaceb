"""int4 settings side by side: quantizer, block size, output layer, at equal threads (issue 26).

    .venv/bin/python bench/int4_sweep.py --json bench/results/int4_sweep.json     # every variant
    .venv/bin/python bench/int4_sweep.py --variants default-b32,rtn-b32 --eval-rows 20

Every variant is the demo model with the demo adapter merged (as bench/optimize.py makes it),
built by onnxruntime-genai's model builder for the CPU (``-p int4 -e cpu``) with the variant's
``--extra_options``, so that each row differs from the builder's default in the settings
named only.  An slmops CPU int4 target is one of these rows: ``rtn-b32`` is the default
(``int4Algorithm: rtn``, the int4 output layer shared with the embeddings), ``rtn_last-b32``
is ``lmHeadInt8: true`` (example 08).

Measured per variant, the way bench/optimize.py measures (its harness): accuracy and
perplexity on the held-out eval rows; decode tokens/s and prefill at one intra-op thread per
usable CPU (equal threads for every row), in rounds alternating between the variants.  The
``vs default`` column is the decode ratio to the builder's default at the same threads.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "bench"), str(REPO / "scripts"), str(REPO / "pipelines"), str(REPO / "operator")]

from _measure import machine, provenance, run_measured  # noqa: E402
from bench_tables import int4_sweep_table  # noqa: E402  (scripts/: the docs' table, from these figures)
from optimize import merged_model  # noqa: E402  (the adapter merged as bench/optimize.py merges it)

MODEL = REPO / ".cache" / "models" / "SmolLM2-135M-Instruct"
ADAPTER = REPO / "runs" / "smollm2-tone" / "adapter"
DATA = REPO / "examples" / "data" / "tone"
# name -> the model builder's --extra_options beyond its defaults (-p int4 -e cpu: block 32,
# symmetric, accuracy level 4, the default quantizer with its own int4 output layer)
VARIANTS: dict[str, dict[str, str]] = {
    "default-b32": {},
    "default-b64": {"int4_block_size": "64"},
    "default-b128": {"int4_block_size": "128"},
    "default-asym-b32": {"int4_is_symmetric": "false"},
    "rtn-b32": {"int4_algo_config": "rtn"},
    "rtn-b64": {"int4_algo_config": "rtn", "int4_block_size": "64"},
    "rtn_last-b32": {"int4_algo_config": "rtn_last"},
    # k_quant's output layer shared with the embeddings does not load (onnxruntime-genai 0.13: its
    # GatherBlockQuantized names an initializer the quantizer called otherwise): not shared here
    "k_quant-b32": {"int4_algo_config": "k_quant", "shared_embeddings": "false"},
}


def build(name: str, options: dict[str, str], merged: Path, work: Path) -> dict:
    """The variant's folder: built, or kept from an earlier run in the same ``--work`` folder
    (the same options: its name says them), whose time to build is then not known."""
    out = work / name
    if (out / "genai_config.json").exists() and (work / f"{name}.options.json").exists():
        if json.loads((work / f"{name}.options.json").read_text()) == options:
            return {"options": options, "produce_s": None, "folder": str(out)}
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(merged), "-o", str(out)]
    cmd += ["-p", "int4", "-e", "cpu", "-c", str(work / "builder-cache")]
    if options:
        cmd += ["--extra_options", *(f"{k}={v}" for k, v in options.items())]
    measured = run_measured(cmd, cwd=work, log=work / f"{name}.log")
    if measured.returncode:
        return {"options": options, "error": measured.output.strip().splitlines()[-1][:200]}
    (work / f"{name}.options.json").write_text(json.dumps(options))
    return {"options": options, "produce_s": measured.wall_s, "folder": str(out)}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated, from {list(VARIANTS)}"
    )
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument("--adapter", type=Path, default=ADAPTER)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--eval-rows", type=int, default=100)
    parser.add_argument("--latency-runs", type=int, default=7, help="runs per latency measurement")
    parser.add_argument("--rounds", type=int, default=3, help="latency rounds, alternating between variants")
    parser.add_argument("--work", type=Path, help="keep the models here (default: a temp folder)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    args.variant_list = [v.strip() for v in args.variants.split(",") if v.strip()]
    if set(args.variant_list) - set(VARIANTS):
        parser.error(f"variants from {list(VARIANTS)}")
    if not (args.adapter / "adapter_config.json").exists():
        parser.error(f"no adapter at {args.adapter}: run `slmops run examples/01-finetune-lora.yaml` first")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from _harness import eval_examples, latency_rounds, quality, usable_cpus
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    config = AutoConfig.from_pretrained(args.model)
    examples = eval_examples(args, tokenizer)
    print(f"machine: {machine()}; {usable_cpus()} threads for every variant", flush=True)
    with tempfile.TemporaryDirectory(prefix="slmops-bench-int4-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        merged = merged_model(args, work)
        rows = {}
        for name in args.variant_list:
            print(f"-- building {name} ...", flush=True)
            rows[name] = build(name, VARIANTS[name], merged, work)
        for name, row in rows.items():
            if "error" not in row:
                print(f"-- measuring {name} ...", flush=True)
                try:
                    row.update(quality(args, row, tokenizer, examples, config))
                except RuntimeError as error:  # built, but onnxruntime refuses to load it
                    row["error"] = str(error).splitlines()[0][:200]
        live = {name: row for name, row in rows.items() if "error" not in row}
        args.rounds = max(args.rounds, 1)
        latency_rounds(args, live, tokenizer, examples)
    figures = {
        **provenance(argv, "onnxruntime", "onnxruntime-genai"),
        "threads": usable_cpus(),
        "variants": rows,
    }
    print()
    print(int4_sweep_table(figures))
    if args.json:  # bench/results/int4_sweep.json
        args.json.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
