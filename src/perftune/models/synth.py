"""`perftune model synth`: a model folder an engine can serve with `--load-format dummy`.

The exact config.json, a generation_config.json, and a byte-level BPE tokenizer trained here (with
`tokenizers`) on an offline corpus, padded with reserved special tokens so its size equals the config's
vocab_size, with BOS/EOS at the config's ids. Random weights of the real shapes give the real model's
speed; the text is meaningless, so benchmarks use ignore_eos and fixed output lengths.
"""

from __future__ import annotations

import json
import os
import shutil
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from perftune.errors import ConfigError, ModelError
from perftune.util.atomic import current_umask, write_text

TRAIN_VOCAB = 1_000_000  # as many merges as the corpus supports, below the first high special id
CORPUS_BYTES = 40_000_000
LOW_ID_LIMIT = 1000  # special ids below this are placed at the start of the vocabulary


def _corpus() -> Iterator[str]:
    """Python's own standard library sources: present offline on every machine that runs perftune."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    total = 0
    for f in sorted(stdlib.rglob("*.py")):
        if "site-packages" in f.parts or "test" in f.parts or "tests" in f.parts:
            continue
        try:
            text = f.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        total += len(text)
        yield text
        if total >= CORPUS_BYTES:
            return


def _ids(v: Any) -> list[int]:
    if v is None:
        return []
    return [int(x) for x in (v if isinstance(v, list) else [v])]


def _special_names(cfg: dict[str, Any], llama_style: bool) -> dict[int, str]:
    names: dict[int, str] = {}
    for i, b in enumerate(_ids(cfg.get("bos_token_id"))):
        names[b] = "<|begin_of_text|>" if llama_style and i == 0 else f"<|bos_{i}|>" if i else "<|bos|>"
    for i, e in enumerate(_ids(cfg.get("eos_token_id"))):
        names.setdefault(
            e, "<|end_of_text|>" if llama_style and i == 0 else f"<|eos_{i}|>" if i else "<|eos|>"
        )
    for p in _ids(cfg.get("pad_token_id")):
        names.setdefault(p, "<|pad|>")
    return names


def synth(config: dict[str, Any], out: Path, *, train_vocab: int = TRAIN_VOCAB) -> dict[str, Any]:
    """Write the model folder; returns a summary. Refuses to overwrite a non-empty folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    lm = config.get("text_config") or config
    vocab = lm.get("vocab_size") or config.get("vocab_size")
    if not isinstance(vocab, int) or vocab < 512:
        raise ModelError("config.json has no usable vocab_size", hint="synth needs vocab_size >= 512")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not empty", hint="pick a new --out folder")
    ids_src = {k: config.get(k, lm.get(k)) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    names = _special_names(ids_src, llama_style=config.get("model_type") == "llama")
    bad = [i for i in names if not 0 <= i < vocab]
    if bad:
        raise ModelError(f"special token ids {bad} are outside vocab_size {vocab}", hint="check bos/eos ids")
    low = sorted(i for i in names if i < LOW_ID_LIMIT)
    high = sorted(i for i in names if i >= LOW_ID_LIMIT)
    low_tokens = [names.get(i, f"<|reserved_low_{i}|>") for i in range((low[-1] + 1) if low else 0)]
    target = min(train_vocab, vocab - 1, (high[0] if high else vocab))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=target,
        special_tokens=low_tokens,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    n = tok.get_vocab_size()
    if n > vocab:
        raise ModelError(
            f"trained vocabulary ({n}) exceeds vocab_size {vocab}", hint="lower the training size"
        )
    from tokenizers import AddedToken

    pad = [
        AddedToken(names.get(i, f"<|reserved_{i - n}|>"), special=True, normalized=False)
        for i in range(n, vocab)
    ]
    if pad:
        tok.add_special_tokens(pad)
    if tok.get_vocab_size() != vocab:
        raise ModelError(
            f"tokenizer has {tok.get_vocab_size()} tokens, config wants {vocab}",
            hint="special ids may collide with trained ids",
        )
    for i, name in names.items():
        if tok.token_to_id(name) != i:
            raise ModelError(
                f"special token {name} landed at {tok.token_to_id(name)}, config wants {i}",
                hint="report this config to perftune",
            )
    bos = _ids(ids_src["bos_token_id"])
    eos = _ids(ids_src["eos_token_id"])
    tmp = Path(tempfile.mkdtemp(prefix=".synth-", dir=out.parent if out.parent.exists() else None))
    try:
        # mkdtemp makes the folder 0o700; the model folder it becomes gets what `mkdir` would give.
        tmp.chmod(0o777 & ~current_umask())
        tok.save(str(tmp / "tokenizer.json"))
        write_text(tmp / "config.json", json.dumps(config, indent=2) + "\n")
        gen = {
            k: v
            for k, v in {
                "bos_token_id": ids_src["bos_token_id"],
                "eos_token_id": ids_src["eos_token_id"],
                "pad_token_id": ids_src["pad_token_id"],
            }.items()
            if v is not None
        }
        write_text(tmp / "generation_config.json", json.dumps(gen) + "\n")
        tcfg: dict[str, Any] = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": int(
                lm.get("max_position_embeddings") or config.get("max_position_embeddings") or 4096
            ),
            "chat_template": "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>\n{% endif %}",
        }
        if bos:
            tcfg["bos_token"] = names[bos[0]]
        if eos:
            tcfg["eos_token"] = names[eos[0]]
        write_text(tmp / "tokenizer_config.json", json.dumps(tcfg) + "\n")
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)  # the folder appears whole or not at all
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {
        "out": str(out),
        "vocab_size": vocab,
        "trained_tokens": n,
        "reserved_tokens": vocab - n,
        "bos": {str(i): names[i] for i in bos},
        "eos": {str(i): names[i] for i in eos},
    }
