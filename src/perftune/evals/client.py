"""A minimal OpenAI-compatible client for accuracy evals: greedy (temperature 0), one reply per prompt.

Not the bench client: no streaming, no timing. HTTP, timeout and connection errors become
``BenchError`` with a one-line message naming the URL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import aiohttp

from perftune.errors import BenchError

Mode = Literal["chat", "completions"]
Prompt = str | Sequence[Mapping[str, str]]

_BODY_SNIPPET = 200


def _messages(prompt: Prompt) -> list[dict[str, str]]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [dict(m) for m in prompt]


def _raw_text(prompt: Prompt) -> str:
    # /v1/completions gets the user text as-is: no chat template, the model continues it.
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(m["content"] for m in prompt if m.get("role", "user") == "user")


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _BODY_SNIPPET else flat[:_BODY_SNIPPET] + "..."


def _reply_text(body: Any, mode: Mode) -> str:
    choice = body["choices"][0]
    content = choice["message"].get("content") if mode == "chat" else choice["text"]
    return "" if content is None else str(content)


async def complete(
    session: aiohttp.ClientSession,
    base_url: str,
    model: str,
    prompt_or_messages: Prompt,
    *,
    mode: Mode,
    max_tokens: int,
    timeout_s: float,
    stop: Sequence[str] | None = None,
) -> str:
    """One greedy completion: ``/v1/chat/completions`` (messages) or ``/v1/completions`` (raw text)."""
    root = base_url.rstrip("/")
    if root.endswith("/v1"):
        root = root[: -len("/v1")]
    payload: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "temperature": 0.0}
    if mode == "chat":
        url = f"{root}/v1/chat/completions"
        payload["messages"] = _messages(prompt_or_messages)
    else:
        url = f"{root}/v1/completions"
        payload["prompt"] = _raw_text(prompt_or_messages)
    if stop:
        payload["stop"] = list(stop)
    try:
        async with session.post(url, json=payload, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            if resp.status >= 400:
                detail = _one_line(await resp.text())
                raise BenchError(
                    f"POST {url} failed: HTTP {resp.status}" + (f": {detail}" if detail else ""),
                    hint="check the server log; is the model name right and the server healthy?",
                )
            body = await resp.json(content_type=None)
    except TimeoutError as e:
        raise BenchError(
            f"POST {url} failed: no reply within {timeout_s:g} s",
            hint="raise the eval timeout or check that the server is not overloaded",
        ) from e
    except aiohttp.ClientError as e:
        raise BenchError(
            f"POST {url} failed: {_one_line(str(e)) or type(e).__name__}",
            hint="is the server running and listening at this address?",
        ) from e
    except ValueError as e:  # a 2xx whose body is not JSON
        raise BenchError(
            f"POST {url} returned a body that is not JSON", hint="the server does not look OpenAI-compatible"
        ) from e
    try:
        return _reply_text(body, mode)
    except (KeyError, IndexError, TypeError, AttributeError) as e:
        raise BenchError(
            f"POST {url} returned an unexpected body: {_one_line(str(body))}",
            hint="the server does not look OpenAI-compatible",
        ) from e


async def ask_all(
    base_url: str,
    model: str,
    prompts: Sequence[Prompt],
    mode: Mode,
    max_tokens: int,
    concurrency: int = 4,
    timeout_s: float = 120,
    *,
    stop: Sequence[str] | None = None,
    on_done: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Ask every prompt with at most ``concurrency`` in flight; replies come back in prompt order.

    ``on_done(done, total)`` is called after each reply (progress observer; optional).
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    sem = asyncio.Semaphore(concurrency)
    total = len(prompts)
    done = 0

    async with aiohttp.ClientSession() as session:

        async def one(prompt: Prompt) -> str:
            nonlocal done
            async with sem:
                reply = await complete(
                    session,
                    base_url,
                    model,
                    prompt,
                    mode=mode,
                    max_tokens=max_tokens,
                    timeout_s=timeout_s,
                    stop=stop,
                )
            done += 1
            if on_done is not None:
                on_done(done, total)
            return reply

        tasks = [asyncio.ensure_future(one(p)) for p in prompts]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            # One failure fails the eval: do not leave the other requests running.
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
