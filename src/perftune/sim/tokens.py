"""Prompt tokenization for the simulator: the model folder's tokenizer when it has one.

Usage counts are then real token counts of that tokenizer. Chat messages are rendered with a plain
role/content template (the model's Jinja chat template is not run), so chat prompt counts can differ
from a real engine's by the template's few tokens per message. Without a tokenizer (a catalog id),
words and punctuation count as tokens and the result is labelled as estimated.
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path
from typing import Any

_WORD = re.compile(r"\w+|[^\w\s]")


class PromptTokenizer:
    def __init__(self, model_dir: str | None) -> None:
        self.tok: Any = None
        self.source = "estimated: words and punctuation (no tokenizer.json)"
        if model_dir:
            f = Path(model_dir) / "tokenizer.json"
            if f.is_file():
                from tokenizers import Tokenizer

                self.tok = Tokenizer.from_file(str(f))
                self.source = f"tokenizer.json of {model_dir}"
        self._piece: dict[int, str] = {}

    def encode(self, text: str) -> list[int]:
        if self.tok is not None:
            return list(self.tok.encode(text, add_special_tokens=False).ids)
        # Stable pseudo-ids per word, so identical text still shares prefix-cache blocks.
        return [zlib.crc32(w.encode()) & 0xFFFFF for w in _WORD.findall(text)]

    def prompt_ids(self, body: dict[str, Any]) -> list[int]:
        """Token ids of a /v1/completions or /v1/chat/completions request body."""
        if "messages" in body:
            text = (
                "".join(f"<|{m.get('role', 'user')}|>\n{m.get('content') or ''}\n" for m in body["messages"])
                + "<|assistant|>\n"
            )
            return self.encode(text)
        prompt = body.get("prompt", "")
        if isinstance(prompt, list) and (not prompt or isinstance(prompt[0], int)):
            return [int(x) for x in prompt]
        if isinstance(prompt, list):
            prompt = "".join(map(str, prompt))
        return self.encode(str(prompt))

    def piece(self, token_id: int) -> str:
        """Text of one sampled token (cached)."""
        s = self._piece.get(token_id)
        if s is None:
            s = self.tok.decode([token_id]) if self.tok is not None else " tok"
            self._piece[token_id] = s
        return s
