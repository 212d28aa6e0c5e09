"""Loader advisor: how the weights should reach the GPUs, and how long that takes.

Rule: a non-MTP tier loads with the RunAI model streamer when the image has it; an MTP tier pulls from
the hub (the streamer needs a drafter patch for the MTP head and streams the weights twice). Expected
rates are planning assumptions (stated, per path) to rank alternatives, not measurements.
"""

from __future__ import annotations

import shlex

from pydantic import BaseModel, ConfigDict, Field

# Planning rates in MB/s (sustained, one node). Conservative mid-points of commonly reported ranges.
RATES_MB_S = {
    "hub-pull": 250.0,  # egress-limited HTTPS download, then a local read
    "runai-streamer": 2000.0,  # concurrent object-store/NVMe streaming straight to GPU memory
    "local-nvme-staging": 3000.0,  # pre-staged on local NVMe, read at disk speed
    "tensorizer": 1500.0,  # serialized tensors streamed from object storage
    "network-fs": 400.0,  # default safetensors read from NFS/Lustre-like shares
}
SLOW_MB_S = 500.0
LARGE_MODEL_GB = 60.0


class LoaderOption(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str
    available: bool
    expected_mb_s: float
    expected_load_s: float
    note: str


class LoaderAdvice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mtp_tier: bool = Field(description="the serve args enable MTP speculative decoding")
    recommended: str
    load_format_flag: str | None = Field(description="the engine flag to use, if any")
    expected_mb_s: float
    expected_load_s: float
    warnings: list[str]
    rationale: list[str]
    ranked_alternatives: list[LoaderOption]


def is_mtp(serve_args: str) -> bool:
    low = serve_args.lower()
    toks = shlex.split(low) if low else []
    joined = " ".join(toks)
    return any(m in joined for m in ("mtp", "nextn", "deepseek_mtp", "qwen3_next_mtp")) and (
        "speculative" in joined or "--num-speculative-tokens" in joined
    )


def advise_loader(
    *,
    model_gb: float,
    serve_args: str = "",
    hub_egress: bool = True,
    runai_streamer: bool = False,
    object_store: bool = False,
    local_nvme: bool = True,
) -> LoaderAdvice:
    mtp = is_mtp(serve_args)
    avail = {
        "runai-streamer": runai_streamer and not mtp,
        "local-nvme-staging": local_nvme,
        "tensorizer": object_store,
        "hub-pull": hub_egress,
        "network-fs": True,
    }
    notes = {
        "runai-streamer": "--load-format runai_streamer"
        + ("" if not mtp else "; not for MTP tiers (drafter patch, streams twice)"),
        "local-nvme-staging": "copy to local NVMe once (init container / prolog), then load from disk",
        "tensorizer": "--load-format tensorizer from object storage (needs a serialized copy)",
        "hub-pull": "default: download from the hub at start (needs egress)",
        "network-fs": "read safetensors from a shared file system",
    }
    opts = [
        LoaderOption(
            path=p,
            available=a,
            expected_mb_s=RATES_MB_S[p],
            expected_load_s=model_gb * 1e3 / RATES_MB_S[p],
            note=notes[p],
        )
        for p, a in avail.items()
    ]
    opts.sort(key=lambda o: (not o.available, -o.expected_mb_s))
    why: list[str] = []
    if mtp:
        rec = (
            "hub-pull"
            if hub_egress
            else next(o.path for o in opts if o.available and o.path != "runai-streamer")
        )
        why.append("MTP tier: pull from the hub (the RunAI streamer needs a drafter patch and streams twice)")
    elif runai_streamer:
        rec = "runai-streamer"
        why.append("non-MTP tier and the image has the RunAI streamer: stream the weights")
    else:
        rec = next(o.path for o in opts if o.available)
        why.append("no RunAI streamer in the image: the fastest available path")
    chosen = next(o for o in opts if o.path == rec)
    warn: list[str] = []
    if chosen.expected_mb_s < SLOW_MB_S and model_gb >= LARGE_MODEL_GB:
        faster = [o.path for o in opts if o.expected_mb_s > chosen.expected_mb_s]
        warn.append(
            f"expected load rate {chosen.expected_mb_s:.0f} MB/s < {SLOW_MB_S:.0f} MB/s "
            f"for a {model_gb:.0f} GB "
            f"model ({chosen.expected_load_s / 60:.0f} min); faster: {', '.join(faster)}"
        )
    flag = {"runai-streamer": "--load-format runai_streamer", "tensorizer": "--load-format tensorizer"}.get(
        rec
    )
    return LoaderAdvice(
        mtp_tier=mtp,
        recommended=rec,
        load_format_flag=flag,
        expected_mb_s=chosen.expected_mb_s,
        expected_load_s=chosen.expected_load_s,
        warnings=warn,
        rationale=why,
        ranked_alternatives=opts,
    )


def loader_markdown(a: LoaderAdvice, model_gb: float) -> str:
    lines = [
        f"# Loader advice ({model_gb:.0f} GB of weights)",
        "",
        f"Recommended: **{a.recommended}**" + (f" (`{a.load_format_flag}`)" if a.load_format_flag else ""),
        f"Expected: {a.expected_mb_s:.0f} MB/s, about {a.expected_load_s:.0f} s "
        "(planning rate, not measured)",
        "",
    ]
    lines += [f"- {r}" for r in a.rationale] + [f"- WARNING: {w}" for w in a.warnings]
    lines += [
        "",
        "| rank | path | available | MB/s | load s | note |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {i} | {o.path} | {o.available} | {o.expected_mb_s:.0f} | {o.expected_load_s:.0f} | {o.note} |"
        for i, o in enumerate(a.ranked_alternatives, 1)
    ]
    return "\n".join(lines) + "\n"
