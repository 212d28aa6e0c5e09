"""Export a GGUF model to a bf16 Hugging Face folder with transformers (needs the `gguf` package).

    python3 scripts/gpu/gguf_to_hf.py MODEL.gguf OUT_DIR

transformers dequantizes the GGUF's tensors (e.g. Q4_1) into a torch model; its config and tokenizer come
from the GGUF metadata. The chat template is copied from the GGUF when the tokenizer did not keep it (an
instruct model must be asked through it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(src: str, out: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(src)
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name, dtype=torch.bfloat16)
    tok = AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name)
    if not getattr(tok, "chat_template", None):
        from gguf import GGUFReader

        f = GGUFReader(str(p)).fields.get("tokenizer.chat_template")
        if f is not None:
            tok.chat_template = f.contents()
            print("chat template copied from the GGUF metadata")
    # transformers tags a GGUF-loaded model as quantized (QuantizationMethod.GGUF) and refuses to save
    # it, though its tensors are already dequantized: rebuild a plain model from the config and load them
    cfg = model.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    print("load_state_dict missing:", missing, "unexpected:", unexpected)
    plain.tie_weights()
    model = plain
    model.save_pretrained(d)
    tok.save_pretrained(d)
    cfg = json.loads((d / "config.json").read_text())
    n = sum(t.numel() for t in model.parameters())
    print(
        json.dumps(
            {
                "params": n,
                "model_type": cfg.get("model_type"),
                "dtype": str(next(model.parameters()).dtype),
                "chat_template": bool(getattr(tok, "chat_template", None)),
                "files": sorted(x.name for x in d.iterdir()),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
