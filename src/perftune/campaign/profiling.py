"""Phases 2 and 2.5: profile each engine's baseline in four layers, then synthesize the ledger.

Phase 2 deploys each engine's baseline with its kernel profiler armed (vLLM `--profiler-config`,
SGLang's trace folder), runs one load window per concurrency with L1-L3 (perftune.profile.run),
then, where Nsight Compute is installed and L2 found kernels, relaunches the engine under ncu for a
short window on L2's top kernels (L4). Captures land in `phase2/<engine>/c<C>/<layer>/` and in
`phase2/captures.json`; the gate names the layers it has and turns red on a failed capture.

Phase 2.5 reads the captures (and every cell's byte-grounded %SoL) and writes the ranked, cited
ledger: `findings/ledger.md` and `findings/ledger.json`. Its top config levers seed phase 3's arms.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from perftune.campaign.base import Ctx, Gate
from perftune.campaign.cells import card_of, hardware_label, live_server, synthetic_workload
from perftune.errors import PerftuneError
from perftune.hardware.ceilings import gpu
from perftune.hardware.roofline import roofline
from perftune.profile import host, kernels, ncu
from perftune.profile.base import LAYER_NAMES, Capture, check, failed, ok, skipped
from perftune.profile.run import Window, run_window
from perftune.profile.synthesis import Evidence, LedgerRow, ledger_md, synthesize
from perftune.serving.levers import lookup, parse_value, translate
from perftune.serving.registry import engine as engine_info
from perftune.targets.local import group_alive
from perftune.util.atomic import write_text

CAPTURES = "phase2/captures.json"
LEDGER_MD = "findings/ledger.md"
LEDGER_JSON = "findings/ledger.json"
L4_SKIP, L4_COUNT = 200, 6  # launches past start-up and warm-up; 2 per top kernel


def window_concurrencies(ctx: Ctx) -> list[int]:
    i = ctx.intent
    if i.profiling.concurrency:
        return sorted(set(i.profiling.concurrency))
    return sorted({1, 8, max(i.resolved_ladder())})


def _rel(ctx: Ctx) -> Any:
    return lambda p: ctx.rel(Path(p))


def phase2(ctx: Ctx) -> Gate:
    i = ctx.intent
    d = ctx.run_dir / "phase2"
    layers = tuple(i.profiling.layers)
    caps: list[Capture] = []
    for engine in i.serving.engines:
        info = engine_info(engine)
        kp = info.kernel_profiler if "l2" in layers else None
        tdir = (d / engine / "traces").resolve()
        extra = kp.launch_args(str(tdir)) if kp else []
        env = kp.launch_env(str(tdir)) if kp else {}
        ctx.observe(f"phase 2: deploy {engine} with the profiler hooks ({', '.join(layers)})")
        with live_server(ctx, engine, d, extra_args=extra, env=env) as rec:
            for c in window_concurrencies(ctx):
                w = Window(
                    engine=engine,
                    endpoint=rec.endpoint,
                    served_name=rec.served_name,
                    pid=rec.pgid,
                    concurrency=c,
                    out_dir=d / engine / f"c{c}",
                    layers=layers,
                    isl=i.suite.isl,
                    osl=i.suite.osl,
                    hardware=hardware_label(ctx, engine),
                    simulated=info.simulated,
                    kernel_profiler=kp,
                    trace_dir=tdir,
                    requests=i.profiling.requests_per_window,
                    workload=synthetic_workload(engine),
                )
                caps += [ground(ctx, x) for x in run_window(w, _rel(ctx), ctx.observe)]
        if "l4" in layers:
            caps.append(check(l4(ctx, engine, caps)))
    write_text(ctx.run_dir / CAPTURES, json.dumps([c.model_dump(mode="json") for c in caps], indent=2) + "\n")
    return capture_gate(caps)


def capture_gate(caps: list[Capture]) -> Gate:
    """Phase 2's gate over its captures: red on a failed capture (never read as a finding) or when
    nothing was captured; green naming the layers it has and why the others were skipped."""
    have = sorted({c.layer for c in caps if c.status == "ok"})
    bad = [c for c in caps if c.status == "failed"]
    skipped_ = sorted({f"{c.layer}: {c.reason}" for c in caps if c.status == "skipped"})
    names = ", ".join(LAYER_NAMES[x] for x in have) or "none"
    arts = [CAPTURES, *sorted({a for c in caps for a in c.artifacts[:1]})]
    if bad:
        return Gate(
            "red",
            "capture failed: " + "; ".join(f"{c.key}: {c.reason}" for c in bad),
            hint="see phase2/captures.json; a failed capture is never read as a finding",
            artifacts=arts,
        )
    if not have:
        return Gate("red", "no layer captured anything: " + "; ".join(skipped_), artifacts=arts)
    sim = any(c.simulated for c in caps if c.status == "ok")
    return Gate(
        "green",
        f"layers captured: {names}" + (f"; skipped: {'; '.join(skipped_)}" if skipped_ else ""),
        headline=_headline(caps) + (" (SIMULATED)" if sim else ""),
        tier="DRAFT",
        artifacts=arts,
    )


def _headline(caps: list[Capture]) -> str:
    out = []
    for c in caps:
        if c.status != "ok":
            continue
        f = c.figures
        if c.layer == "l2":
            gaps = float(f.get("host_gap_share") or 0)
            out.append(f"c={c.concurrency}: {f.get('step_budget')}, host gaps {gaps:.0%}")
        elif c.layer == "l3" and c.concurrency == 1:
            out.append(f"c=1 DRAM {float(f.get('dram_bw_util_pct') or 0):.0f}% of peak")
        elif c.layer == "sim" and c.concurrency == 1:
            out.append(f"c=1 modelled GEMM share {float((f.get('shares') or {}).get('gemm') or 0):.0%}")
    return "; ".join(out[:4])


def ground(ctx: Ctx, cap: Capture) -> Capture:
    """An L3 capture gains its byte-grounding: the measured DRAM bytes/s (GPM utilisation x the
    ceiling's HBM bandwidth) beside the analytical bytes per decode step / the window's TPOT."""
    if cap.layer != "l3" or cap.status != "ok":
        return cap
    f = dict(cap.figures)
    g = gpu(ctx.intent.hardware.gpu)
    tpot = f.get("tpot_ms_p50")
    measured = float(f["dram_bw_util_pct"]) / 100.0 * g.hbm_tb_s
    f["measured_tb_s"] = measured
    f["ceiling_tb_s"] = g.hbm_tb_s
    if tpot:
        rf = roofline(
            card_of(ctx),
            g,
            tp=ctx.state.facts.tp,
            batch=cap.concurrency or 1,
            context=ctx.intent.suite.isl + ctx.intent.suite.osl // 2,
            levers=ctx.intent.serving.levers.get(cap.engine, {}),
        )
        per_step = rf.weight_bytes_read_per_step + rf.kv_bytes_read_per_step
        analytical = per_step / (float(tpot) / 1e3) / 1e12
        f["analytical_bytes_per_step"] = per_step
        f["analytical_tb_s"] = analytical
        f["measured_over_analytical"] = measured / analytical if analytical else None
    return cap.model_copy(update={"figures": f})


def l4(ctx: Ctx, engine: str, caps: list[Capture]) -> Capture:
    """Relaunch the engine under Nsight Compute on L2's top kernels, one short c=1 window."""
    kp = engine_info(engine).kernel_profiler
    if kp is None:
        return skipped(
            "l4", engine, f"{engine} runs no GPU kernels to target", "profile vllm or sglang on a GPU"
        )
    exe = ncu.binary()
    if exe is None:
        return skipped(
            "l4", engine, "Nsight Compute (ncu) is not installed", "install Nsight Compute (the CUDA toolkit)"
        )
    top = [
        k["name"]
        for c in caps
        if c.engine == engine and c.layer == "l2" and c.status == "ok"
        for k in (c.figures.get("top_kernels") or [])
    ]
    if not top:
        return skipped(
            "l4", engine, "L2 found no kernel to target", "run L2 (vllm or sglang on a GPU) with L4"
        )
    i = ctx.intent
    d = ctx.run_dir / "phase2" / engine / "l4"
    shutil.rmtree(d, ignore_errors=True)  # a report of an earlier run is never read as this one's
    d.mkdir(parents=True, exist_ok=True)
    report = d / "ncu"
    filt = ncu.name_filter(top, 3)
    prefix = ncu.prefix(exe, report, filt, skip=L4_SKIP, count=L4_COUNT)
    ctx.observe(f"phase 2: {engine} under Nsight Compute, kernels {filt}")
    rep = report.with_suffix(".ncu-rep")
    try:
        with live_server(
            ctx,
            engine,
            ctx.run_dir / "phase2",
            extra_args=list(kp.ncu_args),
            launch_prefix=prefix,
            ready_timeout_s=i.serving.ready_timeout_s * 2,
        ) as rec:
            w = Window(
                engine=engine,
                endpoint=rec.endpoint,
                served_name=rec.served_name,
                pid=None,
                concurrency=1,
                out_dir=d / "window",
                layers=(),
                isl=i.suite.isl,
                osl=i.suite.osl,
                hardware=hardware_label(ctx, engine),
                requests=8,
            )
            run_window(w, _rel(ctx), ctx.observe)
            # ncu writes its report when the application ends: SIGINT to ncu (the group leader) first,
            # then the deploy's teardown takes what is left.
            os.kill(rec.pgid, signal.SIGINT)
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and group_alive(rec.pgid):
                time.sleep(2)
        served = True
    except Exception as e:  # the engine under ncu died or never got ready: a failed capture, said so
        if "ERR_NVGPUCTRPERM" in _last_log(ctx.run_dir / "phase2" / "servers"):
            return skipped(
                "l4",
                engine,
                "Nsight Compute may not read the GPU's performance counters (ERR_NVGPUCTRPERM)",
                "run as root, or load the driver with NVreg_RestrictProfilingToAdminUsers=0",
            )
        if not rep.exists():
            return failed("l4", engine, f"engine under ncu: {type(e).__name__}: {e}"[:300], [], None)
        served = False
    if not rep.exists():
        return failed("l4", engine, f"no report at {ctx.rel(rep)}", [], None)
    try:
        text = ncu.export_csv(exe, rep)
    except (RuntimeError, OSError) as e:
        return failed("l4", engine, f"ncu --import: {e}", [ctx.rel(rep)], None)
    csv_path = d / "ncu_raw.csv"
    write_text(csv_path, text)
    fig = ncu.parse_raw_csv(text)
    fig["filter"] = filt
    fig["launch_skip"], fig["launch_count"] = L4_SKIP, L4_COUNT
    # Launches ncu profiled before the engine served (start-up: warm-up, graph capture) are the
    # same kernels by name, not the served window: shown, never read as a finding.
    fig["launches_from"] = (
        "the served c=1 window (after the skip)" if served else "the engine's start-up: it never served"
    )
    return ok("l4", engine, 1, [ctx.rel(csv_path), ctx.rel(rep)], fig, evidence=served)


def _last_log(servers: Path) -> str:
    """The newest server log's tail (ncu prints its errors there)."""
    logs = sorted(servers.glob("*/*.log"), key=lambda p: p.stat().st_mtime) if servers.exists() else []
    return logs[-1].read_text(errors="replace")[-20000:] if logs else ""


def reparse(ctx: Ctx) -> list[Capture]:
    """Every capture's figures derived again from its raw artifacts (py-spy stacks, engine traces, the
    ncu export) with this version's parsers, the validation gate applied again (a capture the gate
    failed is read again too): a parser fix needs no GPU re-run. L3 and the simulator's captures are
    their own artifacts and are kept; an L2 capture's kernels.json is rewritten with its figures."""
    out = []
    for cap in load_captures(ctx):
        paths = [ctx.run_dir / a for a in cap.artifacts]
        fig: dict[str, Any] | None = None
        if cap.status == "skipped":
            out.append(cap)
            continue
        try:
            if cap.layer == "l1":
                raw = [x for x in paths if x.name.endswith(".collapsed.txt") and x.exists()]
                if raw:
                    text = raw[0].read_text(errors="replace")
                    fig = {**host.classify(text), "rate_hz": cap.figures.get("rate_hz")}
            elif cap.layer == "l2":
                traces = [x for x in paths if ".trace.json" in x.name and x.exists()]
                if traces:
                    fig = kernels.summarize_traces(traces)
                    summary = next((x for x in paths if x.name == "kernels.json"), None)
                    if summary is not None:  # the file the ledger cites says what the figures say
                        write_text(summary, json.dumps(fig, indent=2) + "\n")
            elif cap.layer == "l4":
                csvs = [x for x in paths if x.suffix == ".csv" and x.exists()]
                if csvs:
                    keep = {k: v for k, v in cap.figures.items() if k != "kernels"}
                    fig = {**keep, **ncu.parse_raw_csv(csvs[0].read_text())}
        except kernels.UNREADABLE as e:
            why = f"artifact unreadable: {type(e).__name__}: {e}"
            out.append(failed(cap.layer, cap.engine, why, cap.artifacts, cap.concurrency))
            continue
        if fig is None:
            out.append(cap)
        else:
            out.append(check(cap.model_copy(update={"figures": fig, "status": "ok", "reason": None})))
    write_text(ctx.run_dir / CAPTURES, json.dumps([c.model_dump(mode="json") for c in out], indent=2) + "\n")
    return out


def load_captures(ctx: Ctx) -> list[Capture]:
    p = ctx.run_dir / CAPTURES
    if not p.exists():
        return []
    return [Capture.model_validate(x) for x in json.loads(p.read_text())]


def cell_grounding(ctx: Ctx, engine: str) -> list[dict[str, Any]]:
    return [
        {
            "cell_id": c.cell_id,
            "path": c.path,
            "concurrency": c.concurrency,
            "sol_pct": c.sol_pct,
            "sol_bytes_pct": c.sol_bytes_pct,
            "sol_rigor": c.sol_rigor,
            "simulated": c.simulated,
        }
        for c in ctx.state.cells.values()
        if c.engine == engine
    ]


def ledger(ctx: Ctx, caps: list[Capture]) -> list[LedgerRow]:
    return synthesize(
        [
            Evidence(e, [c for c in caps if c.engine == e], cell_grounding(ctx, e))
            for e in ctx.intent.serving.engines
        ]
    )


def seed_arms(rows: list[LedgerRow], top: int = 5) -> list[dict[str, Any]]:
    """The ledger's top config levers that the engine can run, as phase-3 arm seeds (each naming
    the ledger row it came from)."""
    out: list[dict[str, Any]] = []
    for r in rows:
        if r.kind != "config" or r.value is None or not runnable(r.engine, r.lever, r.value):
            continue
        out.append(
            {"engine": r.engine, "lever": r.lever, "value": r.value, "source": f"ledger#{r.rank} {r.rule}"}
        )
        if len(out) >= top:
            break
    return out


def runnable(engine: str, lever: str, value: str, base: dict[str, Any] | None = None) -> bool:
    """Whether a ledger lever is a real change this engine can run: it parses, translates to flags,
    and its flags differ from the baseline's (cuda-graphs=true on vLLM is its default: no change)."""
    flag_engine = "vllm" if engine in ("sim", "mock") else engine
    base = dict(base or {})
    try:
        levers = {**base, lever: parse_value(lookup(lever), str(value))}
        return translate(levers, flag_engine) != translate(base, flag_engine)
    except PerftuneError:
        return False


def phase25(ctx: Ctx) -> Gate:
    caps = load_captures(ctx)
    if not caps:
        return Gate("red", "no captures to synthesize (phase 2 did not run)", artifacts=[])
    rows = ledger(ctx, caps)
    title = f"{ctx.intent.model.ref}, campaign {ctx.state.run_id}"
    write_text(ctx.run_dir / LEDGER_MD, ledger_md(rows, caps, title))
    write_text(
        ctx.run_dir / LEDGER_JSON, json.dumps([r.model_dump(mode="json") for r in rows], indent=2) + "\n"
    )
    ctx.state.facts.ledger_arms = seed_arms(rows)
    arts = [LEDGER_MD, LEDGER_JSON]
    if not rows:
        return Gate(
            "green",
            "no rule fired on the evidence: the ledger is empty (phase 3 tunes the catalog's levers)",
            artifacts=arts,
        )
    top = ", ".join(f"{r.lever}={r.value}" if r.value else r.lever for r in rows[:3])
    sim = any(r.simulated for r in rows)
    return Gate(
        "green",
        f"{len(rows)} ledger row(s), each citing its artifact; top: {top}",
        headline=f"top lever: {rows[0].lever}={rows[0].value} ({rows[0].citations[0].figure} = "
        f"{rows[0].citations[0].value})" + (" SIMULATED evidence" if sim else ""),
        tier="DRAFT",
        artifacts=arts,
    )
