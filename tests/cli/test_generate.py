"""``slmops generate`` and ``slmops chat`` with tiny models, through every kind of TARGET.

The models are the suite's tiny Llama with two random LoRA adapters (``alpha`` over every
module, ``beta`` over q/v): as a PEFT adapter folder, merged into a model folder, as a
FineTuneJob's output, and exported once to ONNX with both adapters kept separate inside an
OptimizeJob's output.  The job outputs are written the way the stages write them (the real
manifest writer, the real exporter); running the jobs themselves is tested elsewhere.
Answers are checked against transformers/PEFT's own greedy ``generate``, not against
themselves.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from slmops_operator.api import FineTuneJob, OptimizeJob
from slmops_operator.cli.main import cli
from slmops_pipelines import jobs
from slmops_pipelines.steps import publish
from slmops_pipelines.storage import open_store
from tests.conftest import REPO, finetune_manifest
from tests.optimize.test_adapters import make_adapter
from tests.tiny import greedy_alone

TOKENS = 8
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
TIMING = re.compile(r"\[(\d+) tokens, [\d.]+ tokens/s, time to first token \d+ ms")


def write_output(folder: Path, kind: str, name: str, spec: dict) -> Path:
    """Finish ``folder`` as the job ``name``'s succeeded output: its manifest, written last."""
    identity = {"apiVersion": "slmops.io/v1alpha1", "kind": kind, "namespace": "default", "name": name}
    publish.write_manifest(open_store(str(folder)), folder, identity=identity, spec=spec, inputs={})
    return folder


@pytest.fixture(scope="module")
def models(tiny_model: Path, tmp_path_factory) -> dict[str, Path]:
    """The tiny model's adapters, as folders and as outputs of a FineTuneJob and an OptimizeJob."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slmops_pipelines.specs.optimize import OptimizeTarget
    from slmops_pipelines.steps.optimize.export import export_target

    root = tmp_path_factory.mktemp("generate")
    every = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    found = {
        "alpha": make_adapter(tiny_model, root / "alpha", 1, every),
        "beta": make_adapter(tiny_model, root / "beta", 2, ["q_proj", "v_proj"]),
    }
    multi = OptimizeTarget(
        name="multi", provider="CPUExecutionProvider", precision="fp32", merge_adapter=False
    )
    export_target(
        multi, tiny_model, root / "opt" / "targets", cache_dir=root / "builder", adapters=dict(found)
    )

    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), found["alpha"])
    merged.merge_and_unload().save_pretrained(root / "merged")
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(root / "merged")
    found["merged"] = root / "merged"

    ft_spec = FineTuneJob.model_validate(finetune_manifest("tone", tiny_model)).spec
    shutil.copytree(found["alpha"], root / "ft" / "adapter")
    found["ft"] = write_output(
        root / "ft", "FineTuneJob", "tone", ft_spec.model_dump(mode="json", by_alias=True)
    )

    opt_spec = {
        "source": {
            "model": {"uri": str(tiny_model)},
            "adapters": [{"name": n, "uri": str(found[n])} for n in ("alpha", "beta")],
        },
        "targets": [
            {"name": "multi", "provider": "CPUExecutionProvider", "precision": "fp32", "mergeAdapter": False}
        ],
        "evaluation": {"dataset": ft_spec.dataset.model_dump(mode="json", by_alias=True)},
    }
    job = OptimizeJob.model_validate(
        {
            "apiVersion": "slmops.io/v1alpha1",
            "kind": "OptimizeJob",
            "metadata": {"name": "opt"},
            "spec": opt_spec,
        }
    )
    found["opt"] = write_output(
        root / "opt", "OptimizeJob", "opt", job.spec.model_dump(mode="json", by_alias=True)
    )
    return found


@pytest.fixture(scope="module")
def sessions(models):
    """Each TARGET's session, loaded once for the module (tests reset what they change)."""
    opened: dict[str, jobs.ChatSession] = {}

    def session(key: str, **target) -> jobs.ChatSession:
        if key not in opened:
            sampling = jobs.Sampling(max_new_tokens=TOKENS)
            opened[key] = jobs.open_chat(jobs.chat_target(str(models[key]), **target), sampling=sampling)
        opened[key].reset()
        if opened[key].adapters:  # as loaded: the first adapter active
            opened[key].use_adapter(opened[key].adapters[0])
        return opened[key]

    return session


def peft_greedy(base: Path, adapter: Path | None, prompt_ids: list[int]) -> str:
    """What transformers (+PEFT) itself answers, greedily: the reference every engine must match."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    return tokenizer.decode(greedy_alone(model, tokenizer, prompt_ids, TOKENS), skip_special_tokens=True)


def test_adapter_folder_answers_as_peft_does_streaming_piece_by_piece(sessions, models, tiny_model):
    session = sessions("alpha")
    assert session.adapters == ["alpha"] and session.renderer.mode == "chat"  # no job: the chat template
    pieces: list[str] = []
    reply = session.reply("I love this", on_text=pieces.append)
    assert len(pieces) >= 2 and "".join(pieces) == reply.text  # streamed, not printed at the end
    assert reply.new_tokens >= 2 and reply.tokens_per_s > 0 and 0 < reply.first_token_s <= reply.seconds
    session.reset()  # the answer is in the history now: render the first question again
    prompt_ids = session.renderer.token_ids(session.render("I love this"))
    assert reply.text == peft_greedy(tiny_model, models["alpha"], prompt_ids)
    session.use_adapter("none")  # the base model alone, the adapter switched off
    try:
        assert session.reply("I love this").text == peft_greedy(tiny_model, None, prompt_ids) != reply.text
    finally:
        session.use_adapter("alpha")


def test_a_chat_template_model_remembers_the_conversation_until_reset(sessions):
    session = sessions("alpha")
    first = session.reply("I love this")
    again = session.render("And this?")
    assert "I love this" in again and first.text in again and again.count("<|im_start|>user") == 2
    session.reset()
    assert "I love this" not in session.render("And this?")


def test_merged_model_folder_answers_as_its_adapter_did(sessions, models, tiny_model):
    session = sessions("merged")
    assert session.adapters == [] and session.adapter is None
    prompt_ids = session.renderer.token_ids(session.render("I love this"))  # before the history has it
    reply = session.reply("I love this", on_text=None)
    assert reply.text == peft_greedy(tiny_model, models["alpha"], prompt_ids)


def test_finetune_output_renders_the_prompt_as_training_did(sessions, models):
    from slmops_pipelines.steps.data import render_example, render_mode

    session = sessions("ft")
    spec = FineTuneJob.model_validate(finetune_manifest("tone", Path("/m"))).spec.dataset
    row = {"phrase": "I love this", "tone": "positive"}
    trained = render_example(row, spec, render_mode(spec, list(row)), session.renderer.tokenizer)
    assert session.render("I love this") == trained.prompt_text  # "Tone of: {phrase}" in ChatML
    assert "Tone of: I love this" in trained.prompt_text
    assert session.adapters == ["tone"] and not session.renderer.multi_turn  # a promptTemplate job
    session.reply("I love this")
    assert session.history == []  # single-turn: each message on its own, as trained


def test_raw_sends_the_text_as_is(models):
    runner = CliRunner()
    rendered = {}
    for flags in ((), ("--raw",)):
        result = runner.invoke(
            cli,
            [
                "generate",
                str(models["ft"]),
                "-p",
                "I love this",
                "--show-prompt",
                "--max-new-tokens",
                "2",
                *flags,
            ],
        )
        assert result.exit_code == 0, result.output
        rendered[flags] = result.stderr
    assert "<|im_start|>user\nTone of: I love this<|im_end|>" in rendered[()]
    assert "Tone of" not in rendered[("--raw",)] and "<|im_start|>" not in rendered[("--raw",)]
    assert "prompts: the text as is" in rendered[("--raw",)]


def test_chat_shows_each_rendered_prompt_when_asked(models):
    result = CliRunner().invoke(
        cli,
        ["chat", str(models["ft"]), "--show-prompt", "--max-new-tokens", "2"],
        input="I love this\nsee you\n",
    )
    assert result.exit_code == 0, result.output
    assert "<|im_start|>user\nTone of: I love this<|im_end|>" in result.stderr
    assert "<|im_start|>user\nTone of: see you<|im_end|>" in result.stderr


def test_generate_streams_the_answer_to_stdout_and_the_timing_to_stderr(models):
    result = CliRunner().invoke(
        cli, ["generate", str(models["alpha"]), "-p", "I love this", "--max-new-tokens", "8"]
    )
    assert result.exit_code == 0, result.output
    timing = TIMING.search(result.stderr)
    assert timing and int(timing.group(1)) >= 2
    assert result.stdout.strip() and "tokens/s" not in result.stdout


def test_the_onnx_target_answers_as_peft_does_with_each_adapter(sessions, models, tiny_model):
    session = sessions("opt")
    assert session.adapters == ["alpha", "beta"] and session.adapter == "alpha"
    assert "OptimizeJob opt: target multi" in session.description
    answers = {}
    for name in ("alpha", "beta"):
        session.use_adapter(name)
        prompt_ids = session.renderer.token_ids(session.render("I love this"))
        answers[name] = session.reply("I love this", on_text=None).text
        assert answers[name] == peft_greedy(tiny_model, models[name], prompt_ids)
    assert answers["alpha"] != answers["beta"]


def test_optimize_output_targets_by_folder_or_name(models):
    folder = jobs.chat_target(str(models["opt"] / "targets" / "multi"))
    assert folder.runtime == "genai" and folder.description.startswith("OptimizeJob opt")
    assert (
        folder.dataset is not None and folder.dataset.prompt_template == "Tone of: {phrase}"
    )  # the job's data
    with pytest.raises(jobs.InputError, match=r"no target named 'cpu' .*\(targets: multi\)"):
        jobs.chat_target(str(models["opt"]), target_name="cpu")
    alone = jobs.chat_target(str(models["opt"] / "targets" / "multi" / ""))
    assert set(alone.adapters) == {"alpha", "beta"}


def test_sampling_is_repeatable_with_a_seed(sessions):
    session = sessions("opt")
    session.sampling = jobs.Sampling(max_new_tokens=TOKENS, temperature=5.0, top_p=1.0, seed=7)
    try:
        first, again = (session.reply("I love this").text for _ in range(2))
        session.sampling = jobs.Sampling(max_new_tokens=TOKENS, temperature=5.0, seed=8)
        other = session.reply("I love this").text
    finally:
        session.sampling = jobs.Sampling(max_new_tokens=TOKENS)
    assert first == again and first != other


def test_a_missing_adapter_lists_the_known_ones(models):
    result = CliRunner().invoke(cli, ["generate", str(models["opt"]), "-p", "hi", "--adapter", "gamma"])
    assert result.exit_code == 2
    assert "no adapter named 'gamma' (known: alpha, beta)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 2  # "loading ..." and the one-line error


def slmops_command(*args: str) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'operator'}:{REPO / 'pipelines'}:{REPO}"}
    return [sys.executable, "-m", "slmops_operator.cli.main", *args], env


def slmops(*args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    command, env = slmops_command(*args)
    return subprocess.run(
        command,
        input=stdin,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_chat_switches_adapters_without_reloading_the_model(models):
    lines = [
        "I love this",
        "/adapter beta",
        "I love this",
        "/adapter gamma",
        "/adapters",
        "/adapter alpha",
        "I love this",
    ]
    proc = slmops("chat", str(models["opt"]), "--max-new-tokens", str(TOKENS), stdin="\n".join(lines) + "\n")
    assert proc.returncode == 0, proc.stderr  # EOF ends the chat
    assert proc.stderr.count("loading ") == 1 and proc.stderr.count("loaded in") == 1
    assert "error adapter: no adapter named 'gamma' (known: alpha, beta)" in proc.stderr
    assert "* beta" in proc.stderr  # /adapters marks the active one
    assert len(TIMING.findall(proc.stderr)) == 3
    answers = proc.stdout.split("\n")
    assert len(answers) == 4 and answers[0] == answers[2] != answers[1]  # alpha, beta, alpha again


def read_until(fd: int, pattern: str, seen: list[str], timeout: float = 120) -> None:
    """Read the terminal's output into ``seen`` until ``pattern`` shows up (escape codes removed)."""
    import select

    deadline = time.monotonic() + timeout
    while not re.search(pattern, ANSI.sub("", "".join(seen))):
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise AssertionError(f"no {pattern!r} in: {''.join(seen)!r}")
        try:
            seen.append(os.read(fd, 4096).decode(errors="replace"))
        except OSError:  # the child closed the terminal
            return


def test_chat_in_a_terminal_answers_switches_and_leaves_on_ctrl_d(models):
    import pty

    command, env = slmops_command("chat", str(models["opt"] / "targets" / "multi"), "--max-new-tokens", "4")
    leader, follower = pty.openpty()
    proc = subprocess.Popen(command, stdin=follower, stdout=follower, stderr=follower, env=env)
    os.close(follower)
    seen: list[str] = []
    try:
        read_until(leader, r"/exit.*\n(.|\n)*> ", seen)  # the help line, then the prompt
        os.write(leader, b"I love this\n")
        read_until(leader, r"time to first token(.|\n)*> ", seen)
        os.write(leader, b"/adapter beta\n")
        read_until(leader, r"adapter: beta \(of alpha, beta\)(.|\n)*> ", seen)
        os.write(leader, b"\x04")  # Ctrl-D at the start of a line: end of input
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        os.close(leader)
    assert "OptimizeJob opt: target multi" in ANSI.sub("", "".join(seen))


def test_the_default_target_is_the_first_this_machine_runs(monkeypatch):
    from slmops_pipelines.chat.targets import default_target
    from slmops_pipelines.specs import OptimizeJobSpec
    from slmops_pipelines.steps.optimize import providers

    monkeypatch.setattr(providers, "available_providers", lambda: {"CPUExecutionProvider"})  # no GPU here
    targets = [
        ("gpu", "CUDAExecutionProvider"),
        ("cpu4", "CPUExecutionProvider"),
        ("cpu8", "CPUExecutionProvider"),
    ]
    spec = OptimizeJobSpec.model_validate(
        {
            "source": {"model": {"uri": "/m"}},
            "targets": [{"name": n, "provider": p, "precision": "int4"} for n, p in targets],
        }
    )
    name, note = default_target(spec, ["gpu", "cpu4", "cpu8"])
    assert name == "cpu4" and note == " (also: gpu, cpu8; pick one with --target NAME)"
    with pytest.raises(jobs.InputError, match=r"none of the targets \(gpu\) runs on this machine"):
        default_target(spec, ["gpu"])


def test_an_s3_output_is_downloaded_once_and_answers_as_the_local_one(models, sessions, s3_env, s3_bucket):
    local = sessions("ft")
    expected = local.reply("I love this").text
    manifest = publish.read_json(open_store(str(models["ft"])), publish.MANIFEST)
    uri = f"s3://{s3_bucket}/runs/tone"
    publish.write_manifest(  # uploads the folder, then the manifest, as a job on S3 does
        open_store(uri), models["ft"], identity=manifest["job"], spec=manifest["spec"], inputs={}
    )
    target = jobs.chat_target(uri)
    assert target.dataset is not None and target.description.startswith("FineTuneJob tone: adapter/ of s3://")
    adapter = target.adapters["tone"]
    assert adapter.is_relative_to(Path(os.environ["SLMOPS_CACHE_DIR"])) and jobs.chat_target(
        uri
    ).adapters == {"tone": adapter}
    session = jobs.open_chat(target, sampling=jobs.Sampling(max_new_tokens=TOKENS))
    assert session.reply("I love this").text == expected
