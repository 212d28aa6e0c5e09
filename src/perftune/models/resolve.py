"""Find a model's config: catalog name, local folder or config.json, or a hub id (online or HF cache)."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from perftune.errors import ModelError
from perftune.models.card import ModelCard, build_card

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # org/name, exactly one slash


def catalog_index() -> dict[str, dict[str, Any]]:
    text = resources.files("perftune.models").joinpath("catalog/index.yaml").read_text()
    return dict(YAML(typ="safe").load(text))


def catalog_config(name: str) -> dict[str, Any] | None:
    f = resources.files("perftune.models").joinpath(f"catalog/{name.lower()}.json")
    return json.loads(f.read_text()) if f.is_file() else None


def gguf_config(path: Path) -> dict[str, Any]:
    """A Hugging Face-style config.json read from a GGUF file's metadata (llama.cpp's `gguf` package):
    the architecture's block count, widths, heads and context, so a GGUF model (llama.cpp's) gets a
    ModelCard like any other. GGUF keys are prefixed with the architecture (`llama.block_count`)."""
    try:
        import gguf
    except ImportError as e:
        raise ModelError(
            f"{path}: reading a GGUF file needs the gguf package", hint="pip install 'perftune[llamacpp]'"
        ) from e
    try:
        fields = gguf.GGUFReader(str(path)).fields
    except (ValueError, OSError, KeyError) as e:
        raise ModelError(f"{path}: not a readable GGUF file ({e})", hint="check the file") from e

    def get(key: str, default: Any = None) -> Any:
        f = fields.get(key)
        return f.contents() if f is not None else default

    arch = str(get("general.architecture", ""))
    if not arch or get(f"{arch}.block_count") is None:
        raise ModelError(
            f"{path}: GGUF without an architecture's block count", hint="a model GGUF, not a LoRA"
        )
    heads = int(get(f"{arch}.attention.head_count"))
    hidden = int(get(f"{arch}.embedding_length"))
    tokens = fields.get("tokenizer.ggml.tokens")
    vocab = get(f"{arch}.vocab_size") or (len(tokens.data) if tokens is not None else 32000)
    cfg: dict[str, Any] = {
        "model_type": arch,
        "architectures": [f"{arch.capitalize()}ForCausalLM"],
        "num_hidden_layers": int(get(f"{arch}.block_count")),
        "hidden_size": hidden,
        "intermediate_size": int(get(f"{arch}.feed_forward_length", 4 * hidden)),
        "num_attention_heads": heads,
        "num_key_value_heads": int(get(f"{arch}.attention.head_count_kv", heads)),
        "head_dim": int(get(f"{arch}.attention.key_length", hidden // heads)),
        "max_position_embeddings": int(get(f"{arch}.context_length", 4096)),
        "vocab_size": int(vocab),
        "tie_word_embeddings": "output.weight" not in {t.name for t in gguf.GGUFReader(str(path)).tensors},
        "torch_dtype": "float16",  # GGUF dequantizes to f16 activations; the file type is below
        "gguf_file_type": int(get("general.file_type", -1)),
        "gguf_name": str(get("general.name", path.stem)),
    }
    experts = get(f"{arch}.expert_count")
    if experts:
        cfg["num_local_experts"] = int(experts)
        cfg["num_experts_per_tok"] = int(get(f"{arch}.expert_used_count", 2))
    return cfg


def _read_json(path: Path) -> dict[str, Any]:
    if path.suffix.lower() == ".gguf":
        return gguf_config(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ModelError(
            f"{path}: not a text config.json ({e.reason})",
            hint="point at config.json, a model folder or a .gguf",
        ) from e
    except json.JSONDecodeError as e:
        raise ModelError(
            f"{path}: malformed JSON ({e.msg} at line {e.lineno}, column {e.colno})",
            hint="config.json must be valid JSON",
        ) from e
    if not isinstance(data, dict):
        raise ModelError(f"{path}: not a JSON object", hint="config.json must be a JSON object")
    return data


def load_config(ref: str) -> tuple[dict[str, Any], str, dict[str, Any] | None]:
    """(config, display name, hf_quant_config or None) for a catalog name, folder, file or hub id."""
    cat = catalog_config(ref)
    if cat is not None:
        return cat, ref.lower(), None
    p = Path(ref)
    if p.is_dir():
        cfg_path = p / "config.json"
        if not cfg_path.exists():
            raise ModelError(
                f"{p}: no config.json in this folder", hint="point at a model folder or a config.json"
            )
        q = p / "hf_quant_config.json"
        return _read_json(cfg_path), str(p), _read_json(q) if q.exists() else None
    if p.suffix == ".json" or p.exists():
        if not p.exists():
            raise ModelError(f"config file not found: {p}", hint="check the path")
        return _read_json(p), str(p), None
    if HUB_ID.match(ref) and not ref.startswith("."):
        return _from_hub(ref), ref, None
    if "/" in ref or ref.startswith(("~", ".")):
        # a path that does not exist: say so, instead of asking the hub for a repo named like a path
        raise ModelError(
            f"model folder not found: {ref}",
            hint="check the path (a folder with config.json), or give a catalog name or a hub id org/name",
        )
    raise ModelError(
        f"unknown model '{ref}'",
        hint="a catalog name ("
        + ", ".join(sorted(catalog_index()))
        + "), a model folder, a config.json, or a hub id org/name",
    )


def _from_hub(repo_id: str) -> dict[str, Any]:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ModelError("huggingface_hub is not installed", hint="pip install huggingface-hub") from e
    try:
        path = hf_hub_download(repo_id, "config.json")
    except Exception as e:  # offline and uncached, gated, or not found: all the same to the user
        raise ModelError(
            f"cannot get config.json for hub id '{repo_id}' ({type(e).__name__})",
            hint=f"no local folder '{repo_id}' either; offline and not in the local HF cache? download "
            "it once, or pass a local folder or a catalog name",
        ) from e
    return _read_json(Path(path))


def model_card(ref: str) -> ModelCard:
    cfg, name, hfq = load_config(ref)
    return build_card(cfg, name, hfq)
