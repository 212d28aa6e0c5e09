"""`perftune inspect`, `perftune advise tp|sol|loader`, `perftune model synth`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from perftune import api
from perftune.cli.common import err_console, handle_errors, out_console, print_json
from perftune.errors import ConfigError

advise_app = typer.Typer(
    help="Size a model before any GPU is spent: TP, speed of light, loader.", no_args_is_help=True
)
model_app = typer.Typer(help="Model folders for engines without weights.", no_args_is_help=True)


def _b(x: float) -> str:
    return f"{x / 1e9:.2f}B"


DTYPE_HELP = (
    "weight dtype what-if: bf16 | fp16 | fp8 | int8 | int4 | nvfp4 | mxfp4 (default: the checkpoint's)"
)
KV_HELP = (
    "KV dtype what-if: bf16 | fp16 | fp8 | q8_0 | q4_0 | ... (default: the levers', else the model's dtype)"
)
LEVER_HELP = (
    "NAME=VALUE, repeatable: the deploy's dtype levers, e.g. quantization=fp8, kv-cache-dtype=fp8, "
    "kv-cache-type=q8_0"
)


def _levers(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise ConfigError(
                f"bad --lever '{item}'", hint="write NAME=VALUE, e.g. --lever kv-cache-dtype=fp8"
            )
        out[k] = v
    return out


@handle_errors
def inspect(
    model: str = typer.Argument(
        ..., help="catalog name (e.g. deepseek-v3), model folder, config.json or hub id"
    ),
    as_json: bool = typer.Option(False, "--json", help="print the ModelCard as JSON"),
) -> None:
    """Read a model's config and compute its card: parameters, attention, KV bytes per token."""
    card = api.inspect_model(model)
    if as_json:
        print_json(card.model_dump(mode="json"))
        return
    t = Table(title=f"{card.name} ({card.family}, {card.attention})", show_header=False)
    rows = [
        (
            "layers / hidden / heads / kv heads / head dim",
            f"{card.layers} / {card.hidden_size} / {card.heads} / {card.kv_heads} / {card.head_dim}",
        ),
        ("vocab / tied / max context", f"{card.vocab_size} / {card.tied_embeddings} / {card.max_context}"),
        ("total params", _b(card.total_params)),
        (
            "active params (per token; + input embedding)",
            f"{_b(card.active_params)} ({_b(card.active_params_with_embedding)})",
        ),
        (
            "weights bf16 / fp8 / nvfp4 / int4",
            " / ".join(f"{card.weight_bytes[d] / 1e9:.1f} GB" for d in ("bf16", "fp8", "nvfp4", "int4")),
        ),
        (
            "KV bytes/token bf16 / fp8",
            f"{card.kv_bytes_per_token['bf16']:.0f} / {card.kv_bytes_per_token['fp8']:.0f}",
        ),
    ]
    if card.moe:
        rows.append(
            (
                "MoE",
                f"{card.moe.experts} experts, top-{card.moe.top_k}, {card.moe.shared_experts} shared, "
                f"width {card.moe.expert_intermediate}, {card.moe.moe_layers} MoE + "
                f"{card.moe.dense_layers} dense layers",
            )
        )
    rows.append(("checkpoint dtype", card.torch_dtype))
    if card.quantization:
        kept = [g for g, v in card.quantized_share.items() if v < 1.0 and getattr(card.params, g) > 0]
        rows.append(
            (
                "quantization",
                f"{card.quantization.describe()}; {card.native_weight_bytes / 1e9:.1f} GB "
                f"({', '.join(kept)} kept 16-bit)",
            )
        )
    rows += [("engine requirement", r) for r in card.engine_requirements]
    rows += [("note", w) for w in card.warnings]
    for k, v in rows:
        t.add_row(k, v)
    out_console.print(t)


@advise_app.command("tp")
@handle_errors
def advise_tp(
    model: str = typer.Argument(..., help="catalog name, folder, config.json or hub id"),
    gpu: str = typer.Option(
        "h100", help="GPU from ceilings.yaml (h100, h200, b200, a100, l40s, mi300x, ...)"
    ),
    dtype: str | None = typer.Option(None, help=DTYPE_HELP),
    kv_dtype: str | None = typer.Option(None, help=KV_HELP),
    lever: list[str] = typer.Option([], help=LEVER_HELP),
    current_tp: int | None = typer.Option(None, help="the TP you run today (to check for over-provisioning)"),
    concurrency: int = typer.Option(64, help="target concurrent sequences"),
    context: int = typer.Option(4096, help="target tokens per sequence"),
    usd_per_gpu_hour: float = typer.Option(2.5, help="price of one GPU-hour"),
    emit: Path | None = typer.Option(None, help="write tp_rightsize.json and TP-RIGHTSIZE.md here"),
    as_json: bool = typer.Option(False, "--json", help="print the advice as JSON"),
) -> None:
    """The lowest TP that fits; flags OVER-PROVISIONED when active params per GPU < 3B."""
    a = api.advise_tp(
        model,
        gpu,
        dtype=dtype,
        kv_dtype=kv_dtype,
        levers=_levers(lever),
        current_tp=current_tp,
        concurrency=concurrency,
        context=context,
        usd_per_gpu_hour=usd_per_gpu_hour,
        emit=emit,
    )
    if as_json:
        print_json(a.model_dump(mode="json"))
        return
    out_console.print(
        f"recommended TP: {a.recommended_tp}  over-provisioned: {a.over_provisioned}  "
        f"confidence: {a.confidence}"
    )
    out_console.print(f"weights {a.dtype}: {a.dtype_source}; KV {a.kv_dtype}: {a.kv_source}", highlight=False)
    for r in a.rationale:
        out_console.print(f"  - {r}", highlight=False)


@advise_app.command("sol")
@handle_errors
def advise_sol(
    model: str = typer.Argument(..., help="catalog name, folder, config.json or hub id"),
    gpu: str = typer.Option("h100", help="GPU from ceilings.yaml"),
    dtype: str | None = typer.Option(None, help=DTYPE_HELP),
    kv_dtype: str | None = typer.Option(None, help=KV_HELP),
    lever: list[str] = typer.Option([], help=LEVER_HELP),
    tp: int = typer.Option(1, help="tensor parallelism"),
    batch: int = typer.Option(1, help="decode batch (concurrent sequences)"),
    context: int = typer.Option(1024, help="tokens in each sequence's KV cache"),
    measured_tpot_ms: float | None = typer.Option(None, help="a measured TPOT to place against the floor"),
    as_json: bool = typer.Option(False, "--json", help="print as JSON"),
) -> None:
    """Roofline floors for decode and prefill, and the %SoL of a measured TPOT."""
    r = api.advise_sol(
        model,
        gpu,
        dtype=dtype,
        kv_dtype=kv_dtype,
        levers=_levers(lever),
        tp=tp,
        batch=batch,
        context=context,
        measured_tpot_ms=measured_tpot_ms,
    )
    if as_json:
        print_json(r)
        return
    out_console.print(
        f"weights {r['weight_dtype']}: {r['weight_source']}; KV {r['kv_dtype']}: {r['kv_source']}",
        highlight=False,
    )
    out_console.print(
        f"decode step floor {r['decode_step_floor_ms']:.2f} ms ({r['bound']}-bound, "
        f"{r['weight_bytes_read_per_step'] / 1e9:.2f} GB weights + "
        f"{r['kv_bytes_read_per_step'] / 1e9:.3f} GB "
        f"KV per step per GPU; ceiling {r['ceiling_key']})"
    )
    if "sol_pct" in r:
        out_console.print(f"measured {r['measured_tpot_ms']} ms = {r['sol_pct']:.1f}% of speed of light")


@advise_app.command("loader")
@handle_errors
def advise_loader(
    model: str | None = typer.Option(None, help="model (catalog/folder/hub id) to size the weights from"),
    model_gb: float | None = typer.Option(None, help="weight size in GB (instead of --model)"),
    serve_args: str = typer.Option("", help="the tier's serve args (MTP speculative decoding is detected)"),
    hub_egress: bool = typer.Option(True, help="the nodes can download from the hub"),
    runai_streamer: bool = typer.Option(False, help="the image has the RunAI model streamer"),
    object_store: bool = typer.Option(False, help="an object store holds the weights"),
    local_nvme: bool = typer.Option(True, help="nodes have local NVMe for staging"),
    emit: Path | None = typer.Option(None, help="write loader_advisor.json and LOADER.md here"),
    as_json: bool = typer.Option(False, "--json", help="print as JSON"),
) -> None:
    """How the weights should reach the GPUs: RunAI streamer for non-MTP tiers, hub pull for MTP tiers."""
    a, gb = api.advise_loader(
        model=model,
        model_gb=model_gb,
        serve_args=serve_args,
        hub_egress=hub_egress,
        runai_streamer=runai_streamer,
        object_store=object_store,
        local_nvme=local_nvme,
        emit=emit,
    )
    if as_json:
        print_json({**a.model_dump(mode="json"), "model_gb": gb})
        return
    out_console.print(
        f"recommended: {a.recommended} ({a.expected_mb_s:.0f} MB/s planned, ~{a.expected_load_s:.0f} s "
        f"for {gb:.0f} GB)"
    )
    for w in a.warnings:
        out_console.print(f"[yellow]warning:[/] {w}", highlight=False)


@model_app.command("synth")
@handle_errors
def synth(
    model: str = typer.Argument(..., help="catalog name or config.json"),
    out: Path = typer.Option(..., help="folder to create"),
    as_json: bool = typer.Option(False, "--json", help="print a summary as JSON"),
) -> None:
    """Write config.json, generation_config.json and a vocab-exact tokenizer for --load-format dummy."""
    import time

    t0 = time.monotonic()
    err_console.print(
        f"synthesizing {model} into {out}: training a byte-level BPE tokenizer on Python's standard "
        "library sources (about a minute on 2 cores)",
        highlight=False,
    )
    s = api.synth_model(model, out)
    err_console.print(f"done in {time.monotonic() - t0:.0f} s", highlight=False)
    if as_json:
        print_json(s)
    else:
        out_console.print(
            f"wrote {s['out']}: vocab {s['vocab_size']} ({s['trained_tokens']} trained + "
            f"{s['reserved_tokens']} reserved tokens)"
        )
