"""``slmops generate TARGET --prompt TEXT`` and ``slmops chat TARGET``: talk to the model a job made.

TARGET is a job's output (``runs/NAME``, ``s3://...``, or a folder in one such as
``runs/opt/targets/cpu-int4``), a PEFT adapter folder, a merged model folder or an
onnxruntime-genai folder; the pipelines' :func:`slmops_pipelines.jobs.chat_target` says which
and how the job rendered its prompts.  The model is loaded once; with separate ONNX adapters,
``--adapter`` (or ``/adapter`` in a chat) switches between them without reloading it.

Streams: the model's text goes to stdout as it comes (so ``> answer.txt`` holds the answer
alone); notes, timings (tokens/s, time to first token) and errors go to stderr.  ``chat``
reads one message per line from stdin, a terminal or a pipe, and ends at ``/exit`` or EOF
(Ctrl-D); Ctrl-C stops the answer being written.  Errors are one line: exit code 2 for
what the user can fix (an unknown adapter lists the known ones), 1 otherwise; inside a chat
a bad command is reported and the chat goes on.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.markup import escape

from slmops_operator.cli.runner import EXIT_FAILED, EXIT_INVALID

if TYPE_CHECKING:
    from slmops_pipelines.jobs import ChatSession

err_console = Console(stderr=True)

CHAT_HELP = "/adapter NAME switches adapters, /adapters lists them, /reset forgets the conversation, /exit (or Ctrl-D) leaves"


def note(message: str) -> None:
    err_console.print(f"[dim]{escape(message)}[/dim]", highlight=False, soft_wrap=True)


def error_line(message: str) -> None:
    err_console.print(f"[red]error[/red] {escape(message)}", highlight=False, soft_wrap=True)


@contextmanager
def one_line_errors() -> Iterator[None]:
    """A JobError ends the command in one line: exit 2 for bad input (InputError), 1 otherwise."""
    from slmops_pipelines import jobs

    try:
        yield
    except jobs.JobError as exc:
        error_line(str(exc))
        sys.exit(EXIT_INVALID if isinstance(exc, jobs.InputError) else EXIT_FAILED)


def model_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """TARGET and the options ``generate`` and ``chat`` share: what to load, how to sample."""
    options = [
        click.argument("target"),
        click.option(
            "--target",
            "target_name",
            default=None,
            help="Which target of an optimized output to load (default: the first this machine runs).",
        ),
        click.option(
            "--model", default=None, help="Base model of a PEFT adapter folder (a folder, hf://, s3://)."
        ),
        click.option("--adapter", default=None, help="The adapter to use (none: the base model)."),
        click.option("--raw", is_flag=True, help="Send the text as is: no promptTemplate, no chat template."),
        click.option("--max-new-tokens", type=click.IntRange(min=1), default=256, show_default=True),
        click.option(
            "--temperature",
            type=click.FloatRange(min=0),
            default=0.0,
            show_default=True,
            help="0: greedy (the default); above 0: sampling.",
        ),
        click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True),
        click.option("--seed", type=int, default=None, help="Seed of the sampling, for repeatable answers."),
        click.option(
            "--show-prompt",
            is_flag=True,
            help="First print each rendered prompt (what the model receives) to stderr.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def load_session(settings: dict[str, Any]) -> ChatSession:
    """Resolve TARGET, say what it is, and load it once."""
    from slmops_pipelines import jobs

    started = time.perf_counter()
    target = jobs.chat_target(
        settings["target"], target_name=settings["target_name"], model=settings["model"]
    )
    note(f"loading {target.description}")
    sampling = jobs.Sampling(
        max_new_tokens=settings["max_new_tokens"],
        temperature=settings["temperature"],
        top_p=settings["top_p"],
        seed=settings["seed"],
    )
    session = jobs.open_chat(target, sampling=sampling, raw=settings["raw"], adapter=settings["adapter"])
    adapters = f"; adapter: {describe_adapter(session)}" if session.adapters else ""
    note(f"loaded in {time.perf_counter() - started:.1f} s; {session.renderer.describe()}{adapters}")
    return session


def describe_adapter(session: ChatSession) -> str:
    return f"{session.adapter or 'none (the base model)'} (of {', '.join(session.adapters)})"


def answer(session: ChatSession, text: str) -> None:
    """Stream the reply to stdout piece by piece, then its timing to stderr."""

    def show(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()  # each piece as it comes, even into a pipe

    reply = session.reply(text, on_text=show)
    sys.stdout.write("\n")
    sys.stdout.flush()
    note(f"[{reply.summary()}]")


@click.command()
@model_options
@click.option("--prompt", "-p", required=True, help="The text to answer.")
def generate(prompt: str, show_prompt: bool, **settings: Any) -> None:
    """Answer PROMPT with the model TARGET names, streaming the tokens.

    TARGET: a job's output (runs/NAME, s3://...), a folder in one (runs/OPT/targets/NAME),
    a PEFT adapter folder, a merged model folder or an onnxruntime-genai folder.  The prompt
    is rendered as the job rendered its training prompts (promptTemplate, chat template)
    unless --raw.
    """
    with one_line_errors():
        session = load_session(settings)
        if show_prompt:
            err_console.print(session.render(prompt), markup=False, highlight=False, soft_wrap=True)
        answer(session, prompt)


@click.command()
@model_options
def chat(show_prompt: bool, **settings: Any) -> None:
    """Chat with the model TARGET names: one message per line on stdin (a terminal or a pipe).

    In the chat: /adapter NAME switches adapters without reloading the model, /adapters lists
    them, /reset forgets the conversation, /exit or Ctrl-D leaves.  Models fine-tuned on
    conversations (chat template, no promptTemplate) keep the history; promptTemplate jobs
    learned single question-answer pairs, and each message is answered on its own.
    """
    with one_line_errors():
        session = load_session(settings)
        note(CHAT_HELP)
        interactive = sys.stdin.isatty()
        while (line := read_line(interactive)) is not None:
            text = line.strip()
            if text.startswith("/"):
                if not run_command(session, text):
                    break
            elif text:
                if show_prompt:  # with the history, as the model receives it
                    err_console.print(session.render(text), markup=False, highlight=False, soft_wrap=True)
                try:
                    answer(session, text)
                except KeyboardInterrupt:  # Ctrl-C stops this answer, not the chat
                    sys.stdout.write("\n")
                    note("stopped")


def read_line(interactive: bool) -> str | None:
    """The next message; None at EOF.  On a terminal, ``input`` gives line editing."""
    if interactive:
        try:
            return input("> ")
        except EOFError:
            sys.stdout.write("\n")
            return None
    line = sys.stdin.readline()
    return line if line else None


def run_command(session: ChatSession, text: str) -> bool:
    """Run a chat command; False when the chat should end."""
    from slmops_pipelines import jobs

    command, _, argument = text.partition(" ")
    argument = argument.strip()
    if command in ("/exit", "/quit"):
        return False
    if command == "/reset":
        session.reset()
        note("conversation forgotten")
    elif command == "/adapters":
        listed = [f"{'*' if name == session.adapter else ' '} {name}" for name in session.adapters]
        listed.append(f"{'*' if session.adapter is None else ' '} {jobs.NO_ADAPTER} (the base model)")
        note("\n".join(listed))
    elif command == "/adapter" and argument:
        try:
            session.use_adapter(argument)
        except jobs.JobError as exc:
            error_line(str(exc))
            return True
        note(f"adapter: {describe_adapter(session) if session.adapters else 'none'}")
    elif command == "/adapter":
        note(f"adapter: {describe_adapter(session) if session.adapters else 'none'}")
    else:
        note(f"unknown command {command}: {CHAT_HELP}")
    return True
