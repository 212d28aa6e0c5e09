"""The steps of an EAGLE-3 training job that are perftune's own, run in the trainer's Python (torch,
transformers, speculators): `python -m perftune.draft.steps STEP JOB.json`.

- respond: the target answers each prompt (greedy, its chat template): the head learns to predict the
  target's own text, which is what the engine will verify.
- pretok: conversations -> input_ids + loss_mask (1 on the assistant's tokens), with the chat template.
- hidden: the target's hidden states speculators trains on, one safetensors file per dataset row
  (hs_{i}: hidden_states [seq, 4, hidden] and token_ids [seq]): the residual stream entering layers
  2, n/2 and n-3 and the final norm (forward pre-hooks; vLLM's extract_hidden_states reads the same).
- train: speculators' trainer with its metric records appended to metrics.jsonl; on a machine without
  CUDA, the four places speculators hard-wires the GPU are pointed at the CPU (a smoke run).
Imports of torch and the libraries are inside the steps: this module is importable without them.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, cast

from perftune.draft.job import DraftJob


def aux_layers(n_layers: int) -> list[int]:
    """speculators' default EAGLE-3 target layers [2, n//2, n-3], plus n: the final residual."""
    return [2, n_layers // 2, n_layers - 3, n_layers]


def loss_mask(prompt_len: int, full_len: int) -> list[int]:
    """0 over the prompt (rendered with the generation prompt), 1 over the assistant's answer."""
    return [0] * prompt_len + [1] * (full_len - prompt_len)


def respond(job: DraftJob, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompts = [json.loads(x) for x in Path(job.data).read_text().splitlines() if x.strip()][: job.max_samples]
    tok: Any = AutoTokenizer.from_pretrained(job.target)
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    dev = job.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model: Any = (
        cast(Any, AutoModelForCausalLM).from_pretrained(job.target, dtype=torch.bfloat16).to(dev).eval()
    )
    rows = []
    # a GPU answers 128 prompts a step (a 135M-8B target decodes launch-bound: a bigger batch is ~free)
    batch = 128 if dev != "cpu" else 4
    # prompts that leave room for the answer in a training sequence; longer ones are skipped, never cut
    # (a cut prompt would lose its chat template's generation prompt)
    fits = []
    for p in prompts:
        text = tok.apply_chat_template(p["conversations"], add_generation_prompt=True, tokenize=False)
        if len(tok(text)["input_ids"]) <= job.seq_len - job.response_tokens:
            fits.append((p["conversations"], text))
    print(
        f"respond: {len(fits)} of {len(prompts)} prompts fit {job.seq_len} tokens with the answer", flush=True
    )
    for k in range(0, len(fits), batch):
        convs = [c for c, _t in fits[k : k + batch]]
        enc = tok([t for _c, t in fits[k : k + batch]], return_tensors="pt", padding=True).to(dev)
        with torch.no_grad():
            gen = model.generate(
                **enc, max_new_tokens=job.response_tokens, do_sample=False, pad_token_id=tok.pad_token_id
            )
        for c, g in zip(convs, gen[:, enc["input_ids"].shape[1] :], strict=True):
            answer = tok.decode(g, skip_special_tokens=True).strip()
            if answer:
                rows.append({"conversations": [*c, {"role": "assistant", "content": answer}]})
        print(f"respond: {min(k + batch, len(fits))}/{len(fits)}", flush=True)
    (out / "conversations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def pretok(job: DraftJob, out: Path) -> None:
    from transformers import AutoTokenizer

    tok: Any = AutoTokenizer.from_pretrained(job.target)

    def ids(x: Any) -> list[int]:
        return list(x["input_ids"] if hasattr(x, "keys") else x)

    n = 0
    with (out / "pretok.jsonl").open("w") as fh:
        for line in (out / "conversations.jsonl").read_text().splitlines():
            conv = json.loads(line)["conversations"]
            j = len(conv) - 1
            p = ids(tok.apply_chat_template(conv[:j], add_generation_prompt=True, tokenize=True))
            f = ids(tok.apply_chat_template(conv, add_generation_prompt=False, tokenize=True))
            if f[: len(p)] != p:
                continue  # a template that re-renders the prompt differently: the mask would be wrong
            fh.write(
                json.dumps(
                    {"input_ids": f[: job.seq_len], "loss_mask": loss_mask(len(p), len(f))[: job.seq_len]}
                )
                + "\n"
            )
            n += 1
    print(f"pretok: {n} rows", flush=True)


def hidden(job: DraftJob, out: Path) -> None:
    import torch
    from datasets import load_from_disk
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    dev = job.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model: Any = (
        cast(Any, AutoModelForCausalLM).from_pretrained(job.target, dtype=torch.bfloat16).to(dev).eval()
    )
    layers = model.model.layers
    ids_ = aux_layers(len(layers))
    cap: dict[int, Any] = {}

    def hook(idx: int) -> Any:
        def pre(_mod: Any, args: Any, kwargs: Any) -> None:
            cap[idx] = (args[0] if args else kwargs["hidden_states"]).detach()

        return pre

    for i in ids_:  # id n is the input of the final norm: the residual before it
        (layers[i] if i < len(layers) else model.model.norm).register_forward_pre_hook(
            hook(i), with_kwargs=True
        )
    ds = load_from_disk(str(out / "dataset")).with_format("torch")
    hs_dir = out / "dataset" / "hidden_states"
    hs_dir.mkdir(exist_ok=True)
    with torch.no_grad():
        for i in range(len(ds)):
            f = hs_dir / f"hs_{i}.safetensors"
            if f.exists():
                continue  # resumable
            tokens = ds[i]["input_ids"]
            cap.clear()
            model(input_ids=tokens[None].to(dev))
            hs = torch.stack([cap[k][0] for k in ids_], dim=1).to(torch.bfloat16).cpu().contiguous()
            save_file({"hidden_states": hs, "token_ids": tokens.clone().long()}, str(f))
    print(f"hidden: {len(ds)} rows, layers {ids_}", flush=True)


class _Jsonl(logging.Handler):
    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.msg, dict) and not getattr(record, "hparams", False):
            with self.path.open("a") as fh:
                fh.write(
                    json.dumps({"step": getattr(record, "step", None), **record.msg}, default=str) + "\n"
                )


def train(argv: list[str], out: Path) -> None:
    import speculators.train.cli as cli
    import torch
    from speculators.train.config import TrainConfig

    if not torch.cuda.is_available():  # a CPU smoke run: speculators assumes a GPU in four places
        import speculators.train.checkpointer as ck
        import speculators.train.trainer as tr

        tr.get_local_rank = lambda: "cpu"
        torch.accelerator.synchronize = lambda *a, **k: None
        setup = tr.Trainer.setup_trainer

        def on_cpu(self: Any) -> Any:
            self.device_type = "cpu"
            return setup(self)

        tr.Trainer.setup_trainer = on_cpu
        ck.get_current_device = lambda: "cpu"
    original = cli.setup_metric_logger

    def with_jsonl(*a: Any, **k: Any) -> Any:
        r = original(*a, **k)  # its dictConfig replaces handlers: ours goes on after it
        logging.getLogger("speculators.metrics").addHandler(_Jsonl(out / "metrics.jsonl"))
        return r

    cli.setup_metric_logger = with_jsonl
    cli.main(TrainConfig.resolve(argv))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    step, job_path, rest = args[0], Path(args[1]), args[2:]
    job = DraftJob.model_validate_json(job_path.read_text())
    out = Path(job.out_dir)
    if step == "respond":
        respond(job, out)
    elif step == "pretok":
        pretok(job, out)
    elif step == "hidden":
        hidden(job, out)
    elif step == "train":
        train(rest, out)
    else:
        sys.stderr.write(f"unknown step {step}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
