"""The agent's tools: their schemas for the model, and how each runs.

Every file operation runs inside the sandbox through `exec`, so the host never opens a path
the agent chose (a planted symlink cannot make the host read or write outside the
workspace). Tool failures come back to the model as text, never as exceptions; only
`ask_human` and `finish` stop the loop."""

from __future__ import annotations

import base64
import shlex
from typing import Any, Protocol

from executor.config.defaults import (
    MAX_FILE_WRITE_BYTES,
    OUTPUT_HEAD_CHARS,
    OUTPUT_TAIL_CHARS,
    WRITE_CHUNK_BYTES,
)
from executor.sandbox.container import ExecResult


class Environment(Protocol):
    def exec(self, command: str, *, timeout_s: float | None = None) -> ExecResult: ...


class AskHuman(Exception):
    def __init__(self, question: str) -> None:
        super().__init__(question)
        self.question = question


class Finish(Exception):
    def __init__(self, summary: str) -> None:
        super().__init__(summary)
        self.summary = summary


def _tool(name: str, description: str, **params: str) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": {p: {"type": "string", "description": d} for p, d in params.items()},
                "required": list(params),
            },
        },
    }


SCHEMAS = [
    _tool(
        "bash",
        "Run a bash command in /workspace; returns exit code and output.",
        command="The command.",
    ),
    _tool("read_file", "Read a text file.", path="Path, relative to /workspace or absolute."),
    _tool(
        "write_file",
        "Create or overwrite a file with the given content.",
        path="Path to write.",
        content="The whole new content.",
    ),
    _tool(
        "edit_file",
        "Replace one exact occurrence of old_text with new_text in a file.",
        path="Path to edit.",
        old_text="Exact text to replace (must occur once).",
        new_text="Replacement text.",
    ),
    _tool(
        "ask_human", "Stop and ask the task's owner one precise question.", question="The question."
    ),
    _tool("finish", "Declare the task done.", summary="What changed, why, how it was verified."),
]


def truncate(text: str, head: int = OUTPUT_HEAD_CHARS, tail: int = OUTPUT_TAIL_CHARS) -> str:
    if len(text) <= head + tail:
        return text
    cut = len(text) - head - tail
    return (
        f"{text[:head]}\n\n[... {cut:,} characters cut from the middle; narrow the command "
        f"(grep, head, tail, sed -n) to see that part ...]\n\n{text[-tail:]}"
    )


def run_tool(env: Environment, name: str, args: dict[str, Any]) -> str:
    """Execute one tool call and return what the model is told."""
    try:
        handler = _HANDLERS[name]
    except KeyError:
        raise ValueError(f"unknown tool {name!r}; the tools are {', '.join(_HANDLERS)}") from None
    return handler(env, **args)


def _str_args(**args: Any) -> None:
    for key, value in args.items():
        if not isinstance(value, str):
            raise ValueError(f"argument {key!r} must be a string")


def _bash(env: Environment, command: str) -> str:
    _str_args(command=command)
    return describe(env.exec(command))


def describe(result: ExecResult) -> str:
    head = f"exit code {result.exit_code}"
    if result.killed_reason:
        head += f" ({result.killed_reason})"
    return f"{head}\n{truncate(result.output)}" if result.output else head


def _read_file(env: Environment, path: str) -> str:
    _str_args(path=path)
    result = env.exec(f"cat -- {shlex.quote(path)}")
    if not result.ok:
        return f"cannot read {path}: {result.output.strip() or result.killed_reason}"
    return truncate(result.output) or "(empty file)"


def _write_file(env: Environment, path: str, content: str) -> str:
    _str_args(path=path, content=content)
    return _write_bytes(env, path, content.encode())


def _write_bytes(env: Environment, path: str, data: bytes) -> str:
    if len(data) > MAX_FILE_WRITE_BYTES:
        return f"refused: {len(data):,} bytes is over the {MAX_FILE_WRITE_BYTES:,}-byte limit"
    q = shlex.quote(path)
    staging = "/tmp/.nightcrew-write"
    encoded = base64.b64encode(data).decode()
    chunks = [encoded[i : i + WRITE_CHUNK_BYTES] for i in range(0, len(encoded), WRITE_CHUNK_BYTES)]
    steps = [f": > {staging}"] + [f"printf %s {chunk} >> {staging}" for chunk in chunks]
    steps.append(
        f'mkdir -p -- "$(dirname -- {q})" && base64 -d {staging} > {q}; s=$?; '
        f"rm -f {staging}; exit $s"
    )
    for step in steps:
        result = env.exec(step)
        if not result.ok:
            return f"cannot write {path}: {result.output.strip() or result.killed_reason}"
    return f"wrote {len(data):,} bytes to {path}"


def _edit_file(env: Environment, path: str, old_text: str, new_text: str) -> str:
    _str_args(path=path, old_text=old_text, new_text=new_text)
    q, limit = shlex.quote(path), MAX_FILE_WRITE_BYTES
    size = env.exec(f"stat -c %s -- {q}")
    if size.ok and size.output.strip().isdigit() and int(size.output) > limit:
        return f"{path} is over {limit:,} bytes; edit it with bash (sed, python3) instead"
    result = env.exec(f"base64 -w0 -- {q}")  # exact bytes, not text decoded with losses
    if not result.ok:
        return f"cannot read {path}: {result.output.strip() or result.killed_reason}"
    try:
        text = base64.b64decode(result.output.strip()).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return f"{path} is not UTF-8 text; edit it with bash (sed, python3) instead"
    count = text.count(old_text) if old_text else 0
    if count != 1:
        found = "not found" if count == 0 else f"found {count} times"
        return f"old_text {found} in {path}; it must occur exactly once (include more context)"
    written = _write_bytes(env, path, text.replace(old_text, new_text, 1).encode())
    return f"edited {path}" if written.startswith("wrote") else written


def _ask_human(env: Environment, question: str) -> str:
    _str_args(question=question)
    raise AskHuman(question)


def _finish(env: Environment, summary: str) -> str:
    _str_args(summary=summary)
    raise Finish(summary)


_HANDLERS = {
    "bash": _bash,
    "read_file": _read_file,
    "write_file": _write_file,
    "edit_file": _edit_file,
    "ask_human": _ask_human,
    "finish": _finish,
}
