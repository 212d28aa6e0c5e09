"""Phase 2.5: the captures turned into one ranked, cited lever ledger. Pure functions.

Each rule of `RULES` reads the figures of the `ok` captures (and the cells' byte-grounded %SoL) and,
when its evidence is there, emits a row: the lever (a catalog lever with a value, or an engine-source
candidate), the artifact it rests on with the figure read from it, the evidence's sol_rigor, its
tier (DRAFT: a lever is proven only by an A/B) and the predicted effect. A rule without its evidence
emits nothing: no row without an artifact. Captures marked not-evidence (py-spy samples of the
simulator process) are never read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from perftune.profile.base import Capture


class Citation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    artifact: str = Field(description="path relative to the run folder")
    figure: str = Field(description="the figure read from it")
    value: str


class LedgerRow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rank: int = 0
    rule: str
    engine: str
    kind: str = Field(description="config (a catalog lever) or engine-source (a change inside the engine)")
    lever: str
    value: str | None
    predicted: str = Field(description="the predicted effect")
    why: str
    score: float = Field(description="strength of the evidence, 0..1: the ranking key")
    citations: list[Citation]
    sol_rigor: str
    tier: str = "DRAFT"
    simulated: bool = False

    @property
    def arm(self) -> str:
        return f"{self.lever}={self.value}"


@dataclass(frozen=True)
class Evidence:
    """What a rule reads: one engine's ok captures (evidence only) and its cells' grounding."""

    engine: str
    captures: Sequence[Capture]
    cells: Sequence[dict[str, Any]]  # {cell_id, path, concurrency, sol_pct, sol_bytes_pct, sol_rigor}

    def layer(self, name: str) -> list[Capture]:
        return [c for c in self.captures if c.layer == name and c.status == "ok" and c.evidence]


Hit = tuple[float, list[Citation], str, bool]  # score, citations, sol_rigor, simulated
Fire = Callable[[Evidence], "Hit | None"]


@dataclass(frozen=True)
class Rule:
    id: str
    kind: str
    lever: str
    value: str | None
    predicted: str
    why: str
    fire: Fire
    engines: tuple[str, ...] = ()  # () = any engine


def _cite(cap: Capture, figure: str, value: Any, artifact: int = 0) -> Citation:
    v = f"{value:.3g}" if isinstance(value, float) else str(value)
    return Citation(
        artifact=cap.artifacts[artifact] if cap.artifacts else "(no artifact)", figure=figure, value=v
    )


def _low_c(caps: list[Capture], limit: int = 8) -> list[Capture]:
    return [c for c in caps if (c.concurrency or 1) <= limit]


def _high_c(caps: list[Capture], least: int) -> list[Capture]:
    return [c for c in caps if (c.concurrency or 1) >= least]


def _share_hit(
    caps: list[Capture], figure: str, part: str | None, threshold: float, label: str, scale: float = 1.0
) -> Hit | None:
    """The shape most rules share: the first capture whose figure (or its `part`, for a dict of shares)
    is >= threshold, cited with `label` ({c}: the window's concurrency), scored share x scale."""
    for cap in caps:
        v = cap.figures.get(figure)
        share = float(((v or {}).get(part) if part else v) or 0.0)
        if share >= threshold:
            cite = _cite(cap, label.format(c=cap.concurrency), share)
            return (share * scale, [cite], cap.rigor, cap.simulated)
    return None


def host_gaps(ev: Evidence) -> Hit | None:
    """L2 at c <= 8: the median decode step is host-bound, the GPU idle for >= 15% of it (1 - kernel
    time / wall time inside the step; idle time between requests does not count)."""
    for cap in _low_c(ev.layer("l2")):
        f = cap.figures
        wall, kern = float(f.get("step_wall_ms_median") or 0.0), float(f.get("step_kernel_ms_median") or 0.0)
        idle = 1.0 - kern / wall if wall > 0 else 0.0
        if f.get("step_budget") == "host-bound" and idle >= 0.15:
            return (
                min(1.0, idle),
                [_cite(cap, f"GPU idle share of the median decode step at c={cap.concurrency}", idle)],
                cap.rigor,
                cap.simulated,
            )
    return None


def host_bound_cpu(ev: Evidence) -> Hit | None:
    """L1: the engine's host threads spend >= 25% of their samples scheduling, tokenizing or in the
    API server: the host, not the GPU, paces the step."""
    for cap in ev.layer("l1"):
        sh = cap.figures.get("shares") or {}
        part = sum(float(sh.get(k) or 0.0) for k in ("scheduling", "tokenization", "api_server"))
        if part >= 0.25:
            return (
                min(1.0, part),
                [
                    _cite(
                        cap,
                        f"scheduling+tokenization+api_server share of samples at c={cap.concurrency}",
                        part,
                    )
                ],
                cap.rigor,
                cap.simulated,
            )
    return None


def cpu_compute_bound(ev: Evidence) -> Hit | None:
    """L1 on a CPU engine: >= 50% of samples inside the model's own compute (llama.cpp's decode)."""
    return _share_hit(
        ev.layer("l1"), "shares", "model_compute", 0.5, "model_compute share of samples at c={c}"
    )


def cpu_threads(ev: Evidence) -> Hit | None:
    """L1 on a CPU engine: the tokenizer/server share is small and compute dominates: more threads."""
    hit = cpu_compute_bound(ev)
    if hit is None:
        return None
    return (hit[0] * 0.8, hit[1], hit[2], hit[3])


def low_bandwidth(ev: Evidence) -> Hit | None:
    """Decode at c <= 8 reads DRAM at < 60% of peak: the suite's own byte-grounded cells first (clean
    trials), then phase 2's L3 windows (measured beside L1/L2), then the simulator's modelled GEMM
    share: fewer bytes per token is the lever (FP8 weights)."""
    for cell in ev.cells:
        pct = cell.get("sol_bytes_pct")
        if int(cell.get("concurrency") or 0) <= 8 and pct is not None and 0 < float(pct) < 60.0:
            cite = Citation(
                artifact=str(cell["path"]),
                figure=f"byte-grounded %SoL of {cell['cell_id']} (GPM DRAM bandwidth, % of the ceiling)",
                value=f"{float(pct):.3g}",
            )
            return (1.0 - float(pct) / 100.0, [cite], str(cell.get("sol_rigor")), bool(cell.get("simulated")))
    for cap in _low_c(ev.layer("l3")):
        util = float(cap.figures.get("dram_bw_util_pct") or 0.0)
        if 0 < util < 60.0:
            return (
                1.0 - util / 100.0,
                [_cite(cap, f"GPM DRAM bandwidth utilisation at c={cap.concurrency} (%)", util)],
                cap.rigor,
                False,
            )
    label = "modelled GEMM (weight-read) share of step time at c={c}"
    return _share_hit(_low_c(ev.layer("sim")), "shares", "gemm", 0.5, label, 0.7)


def weights_dominate_decode(ev: Evidence) -> Hit | None:
    """L2 at c <= 8: GEMMs (weight reads) take >= 50% of kernel time: FP8 weights halve the bytes."""
    return _share_hit(
        _low_c(ev.layer("l2")), "family_shares", "gemm", 0.5, "GEMM share of kernel time at c={c}"
    ) or _share_hit(_low_c(ev.layer("sim")), "shares", "gemm", 0.5, "modelled GEMM share at c={c}", 0.7)


def attention_heavy(ev: Evidence) -> Hit | None:
    """L2 (its windows run at c <= 16) at c >= 8, or the sim at c >= 32: attention (KV reads) >= 30% of
    kernel time: FP8 KV."""
    return _share_hit(
        _high_c(ev.layer("l2"), 8),
        "family_shares",
        "attention",
        0.30,
        "attention share of kernel time at c={c}",
    ) or _share_hit(
        _high_c(ev.layer("sim"), 32),
        "shares",
        "attention",
        0.30,
        "attention share of modelled step time at c={c}",
    )


def prefill_heavy(ev: Evidence) -> Hit | None:
    """The sim says prefill takes >= 40% of step time: a larger chunk budget."""
    label = "modelled prefill share of step time at c={c}"
    return _share_hit(ev.layer("sim"), "prefill_time_share", None, 0.40, label, 0.8)


def kv_pressure(ev: Evidence) -> Hit | None:
    """KV occupancy >= 90% or preemptions in the window: a larger KV pool."""
    for cap in ev.layer("sim"):
        occ = float(cap.figures.get("kv_usage_max") or 0.0)
        pre = int(cap.figures.get("preemptions") or 0)
        if occ >= 0.9 or pre > 0:
            return (
                max(occ, 0.5),
                [
                    _cite(
                        cap,
                        f"modelled KV occupancy max / preemptions at c={cap.concurrency}",
                        f"{occ:.2f} / {pre}",
                    )
                ],
                cap.rigor,
                True,
            )
    return None


def moe_dominant(ev: Evidence) -> Hit | None:
    return _share_hit(ev.layer("l2"), "family_shares", "moe", 0.30, "MoE share of kernel time at c={c}")


def communication_bound(ev: Evidence) -> Hit | None:
    for cap in ev.layer("l2"):
        share = float((cap.figures.get("family_shares") or {}).get("communication") or 0.0)
        if cap.figures.get("step_budget") == "communication-bound" and share >= 0.30:
            return (
                share,
                [_cite(cap, f"collectives' share of kernel time at c={cap.concurrency}", share)],
                cap.rigor,
                False,
            )
    return None


def host_sampling_path(ev: Evidence) -> Hit | None:
    """L1 at c >= 32: >= 25% of the engine's host samples in the logits/sampler path: per-step host
    work that grows with the batch (an engine-side candidate: sampler on the GPU, fused logits)."""
    label = "logits/sampler share of host samples at c={c}"
    return _share_hit(_high_c(ev.layer("l1"), 32), "shares", "sampling", 0.25, label)


def kernel_underuses_hbm(ev: Evidence) -> Hit | None:
    """L4: a top kernel reads DRAM at < 50% of peak while its SM throughput is also < 50%: neither
    bound; a kernel-level candidate inside the engine (tile shape, split-K, a better backend)."""
    for cap in ev.layer("l4"):
        for k in cap.figures.get("kernels") or []:
            d, s = k.get("memory_pct_of_peak"), k.get("sm_pct_of_peak")
            if d is not None and s is not None and d < 50.0 and s < 50.0:
                return (
                    1.0 - max(d, s) / 100.0,
                    [
                        _cite(
                            cap,
                            f"ncu DRAM / SM throughput of {k['name'][:60]} (% of peak)",
                            f"{d:.0f} / {s:.0f}",
                        )
                    ],
                    cap.rigor,
                    False,
                )
    return None


RULES: list[Rule] = [
    Rule(
        "host-gaps-graphs",
        "config",
        "cuda-graphs",
        "true",
        "TPOT down by up to the idle share at low concurrency",
        "the GPU idles between kernels: graph the decode step so the host launches it once",
        host_gaps,
        ("vllm", "sglang"),
    ),
    Rule(
        "host-bound-api",
        "engine-source",
        "api-server / scheduler path",
        None,
        "throughput up where the host paces the step",
        "the engine's host threads spend their samples scheduling, tokenizing or serving HTTP, not "
        "waiting on the GPU: async scheduling, more API-server processes, or engine-side fixes",
        host_bound_cpu,
        ("vllm", "sglang", "llamacpp"),
    ),
    Rule(
        "low-bw-fp8",
        "config",
        "quantization",
        "fp8",
        "TPOT down up to ~1.3-1.5x at low concurrency (half the weight bytes)",
        "decode is memory-bound and reads its weights every step: FP8 weights halve the bytes",
        low_bandwidth,
        ("vllm", "sglang", "sim"),
    ),
    Rule(
        "weights-dominate-fp8",
        "config",
        "quantization",
        "fp8",
        "TPOT down at low concurrency where GEMMs read weights",
        "GEMMs dominate the decode step's kernel time: fewer weight bytes per step",
        weights_dominate_decode,
        ("vllm", "sglang", "sim"),
    ),
    Rule(
        "attention-kv-fp8",
        "config",
        "kv-cache-dtype",
        "fp8",
        "attention time and KV capacity: half the KV bytes, twice the sequences before preemption",
        "attention (KV reads) takes a large share of the step at high concurrency",
        attention_heavy,
        ("vllm", "sglang", "sim"),
    ),
    Rule(
        "prefill-chunk",
        "config",
        "prefill-chunk",
        "16384",
        "TTFT down where prefill chunks queue behind each other",
        "prefill takes a large share of step time: larger chunks finish prompts in fewer steps",
        prefill_heavy,
        ("vllm", "sglang", "sim"),
    ),
    Rule(
        "kv-pressure",
        "config",
        "memory-fraction",
        "0.95",
        "more concurrency before preemption",
        "the KV pool runs full (or preempts): a larger pool keeps sequences resident",
        kv_pressure,
        ("vllm", "sglang", "sim"),
    ),
    Rule(
        "moe-ep",
        "config",
        "expert-parallel",
        "true",
        "MoE kernel time down across GPUs",
        "MoE kernels dominate: spread experts",
        moe_dominant,
        ("vllm", "sglang"),
    ),
    Rule(
        "moe-backend",
        "config",
        "moe-backend",
        "auto",
        "MoE GEMM time down with a tuned backend",
        "MoE kernels dominate the step",
        moe_dominant,
        ("vllm", "sglang"),
    ),
    Rule(
        "comm-bound",
        "config",
        "tensor-parallel",
        "fewer",
        "less all-reduce per step",
        "collectives take >= 30% of kernel time",
        communication_bound,
        ("vllm", "sglang"),
    ),
    Rule(
        "host-sampling-path",
        "engine-source",
        "logits / sampler host path",
        None,
        "host time per step down at high concurrency",
        "the engine's host samples sit in computing logits and sampling, work that grows with the batch",
        host_sampling_path,
        ("vllm", "sglang"),
    ),
    Rule(
        "kernel-underuses-hbm",
        "engine-source",
        "kernel tuning",
        None,
        "the kernel's time down towards its DRAM roofline",
        "a top kernel is neither DRAM- nor SM-bound (ncu): tile shape, split-K or another backend",
        kernel_underuses_hbm,
        ("vllm", "sglang"),
    ),
    Rule(
        "cpu-threads",
        "config",
        "threads",
        "all physical cores",
        "tok/s up where the model's compute is the bottleneck",
        "the CPU engine's samples sit in the model's own compute: more threads (or a smaller quant)",
        cpu_threads,
        ("llamacpp",),
    ),
]


def synthesize(evidence: Sequence[Evidence], rules: Sequence[Rule] = RULES) -> list[LedgerRow]:
    """Every rule against every engine's evidence; rows ranked by score (strongest evidence first),
    one row per (engine, lever, value). Pure."""
    rows: list[LedgerRow] = []
    for ev in evidence:
        for r in rules:
            if r.engines and ev.engine not in r.engines:
                continue
            hit = r.fire(ev)
            if hit is None:
                continue
            score, cites, rigor, simulated = hit
            cites = [c for c in cites if c.artifact != "(no artifact)"]
            if not cites:
                continue  # no row without an artifact
            rows.append(
                LedgerRow(
                    rule=r.id,
                    engine=ev.engine,
                    kind=r.kind,
                    lever=r.lever,
                    value=r.value,
                    predicted=r.predicted + (" (SIMULATED evidence)" if simulated else ""),
                    why=r.why,
                    score=round(score, 3),
                    citations=cites,
                    sol_rigor=rigor,
                    simulated=simulated,
                )
            )
    # Strongest evidence first; where two rules propose the same (engine, lever, value), the row with
    # the stronger evidence is kept (its citation is the one the ledger shows).
    rows.sort(key=lambda x: -x.score)
    kept: dict[tuple[str, str, str | None], LedgerRow] = {}
    for row in rows:
        key = (row.engine, row.lever, row.value)
        if key not in kept:
            kept[key] = row
        else:  # the weaker rule's evidence still counts: its citations join the kept row
            first = kept[key]
            more = [c for c in row.citations if c not in first.citations]
            kept[key] = first.model_copy(update={"citations": [*first.citations, *more]})
    return [r.model_copy(update={"rank": k + 1}) for k, r in enumerate(kept.values())]


def ledger_md(rows: Sequence[LedgerRow], captures: Sequence[Capture], title: str) -> str:
    out = [f"# Lever ledger: {title}", ""]
    out.append(
        "Ranked by the strength of the evidence. Every row cites the artifact and the figure it rests on;"
    )
    out.append("every row is DRAFT until phase 3's same-node A/B proves it.")
    out.append("")
    if not rows:
        out.append("No rule fired on the captured evidence.")
    else:
        out.append("| # | engine | lever | why | predicted | evidence | sol_rigor | tier |")
        out.append("|---|---|---|---|---|---|---|---|")
        for r in rows:
            lev = f"`{r.lever}={r.value}`" if r.value is not None else f"{r.lever} (engine source)"
            cites = "<br>".join(f"`{c.artifact}`: {c.figure} = {c.value}" for c in r.citations)
            sim = " SIMULATED" if r.simulated else ""
            out.append(
                f"| {r.rank} | {r.engine} | {lev} | {r.why} | {r.predicted} | {cites} | {r.sol_rigor} "
                f"| {r.tier}{sim} |"
            )
    out += ["", "## Captures", "", "| capture | status | why / figures |", "|---|---|---|"]
    for c in captures:
        note = c.reason or ", ".join(f"{k}={_short(v)}" for k, v in list(c.figures.items())[:6])
        out.append(f"| {c.key} | {c.status}{' (not evidence)' if not c.evidence else ''} | {note} |")
    return "\n".join(out) + "\n"


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_short(x)}" for k, x in list(v.items())[:4]) + "}"
    if isinstance(v, list):
        return f"[{len(v)} items]"
    return str(v)[:60]
