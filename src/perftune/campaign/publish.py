"""Bundle -> lake rows (pure reading of the bundle) and the publish call."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from perftune.bench.records import RequestRecord
from perftune.campaign.state import CampaignState
from perftune.lake.db import dumps, publish_rows
from perftune.report.render import roofline_rows


def bundle_rows(run_dir: Path) -> tuple[str, dict[str, list[dict[str, Any]]]]:
    state = CampaignState.load(run_dir)
    cid, i = state.run_id, state.intent
    cells, trials, requests = [], [], []
    for c in sorted(state.cells.values(), key=lambda c: c.cell_id):
        ci: list[float | None] = [None, None] if c.output_tok_s_ci95 is None else list(c.output_tok_s_ci95)
        cells.append(
            {
                "campaign_id": cid,
                "cell_id": c.cell_id,
                "phase": c.phase,
                "engine": c.engine,
                "config": c.config,
                "weights": c.weights,
                "workload": c.workload,
                "concurrency": c.concurrency,
                "gpus": c.gpus,
                "output_tok_s": c.output_tok_s,
                "output_tok_s_std": c.output_tok_s_std,
                "output_tok_s_ci_lo": ci[0],
                "output_tok_s_ci_hi": ci[1],
                "tpot_median_ms": c.tpot_median_ms,
                "ttft_mean_ms": c.ttft_mean_ms,
                "trials": c.trials,
                "sol_pct": c.sol_pct,
                "ceiling_key": c.ceiling_key,
                "tier": c.tier,
                "simulated": c.simulated,
                "prefix_cache": c.prefix_cache,
                "levers_json": dumps(c.levers),
                "context_json": dumps(c.context),
                "sol_rigor": c.sol_rigor,
                "dram_bw_util_pct": c.dram_bw_util_pct,
                "dram_tb_s": c.dram_tb_s,
                "sol_bytes_pct": c.sol_bytes_pct,
            }
        )
        # A phase 3 cell's trials are separate deploys, one folder each: trial k is folder k's only trial.
        folders = c.trial_paths or [c.path]
        renumber = len(folders) > 1
        for k, folder in enumerate(folders):
            summary = json.loads((run_dir / folder / "summary.json").read_text())
            for t in summary["trials"]:
                trials.append(
                    {
                        "campaign_id": cid,
                        "cell_id": c.cell_id,
                        "trial": k if renumber else t["trial"],
                        "span_s": t["span_s"],
                        "ok": t["counts"]["ok"],
                        "errors": t["counts"]["errors"],
                        "output_tok_s": t["output_tok_s"],
                        "req_s": t["req_s"],
                        "ttft_ms_mean": t["ttft_ms"]["mean"],
                        "tpot_ms_mean": t["tpot_ms"]["mean"],
                        "tpot_ms_p50": t["tpot_ms"]["p50"],
                        "itl_ms_p99": t["itl_ms"]["p99"],
                        "prefix_cache_hit_rate": t.get("engine_prefix_cache_hit_rate"),
                    }
                )
            rec_file = run_dir / folder / "records.jsonl"
            if not rec_file.exists():
                continue
            for line in rec_file.read_text().splitlines():
                if not line.strip():
                    continue
                r = RequestRecord.from_json(json.loads(line))
                if r.trial < 0:
                    continue  # warmup
                requests.append(
                    {
                        "campaign_id": cid,
                        "cell_id": c.cell_id,
                        "trial": k if renumber else r.trial,
                        "idx": r.idx,
                        "ok": r.ok,
                        "ttft_ms": r.ttft_ms,
                        "tpot_ms": r.tpot_ms,
                        "e2e_ms": r.e2e_ms,
                        "input_tokens": r.input_tokens,
                        "output_tokens": r.output_tokens,
                        "token_source": r.token_source,
                    }
                )
    champions, findings = [], []
    sel_file = run_dir / "phase8.4" / "champion_select.json"
    tier = "DRAFT"
    if sel_file.exists():
        sel = json.loads(sel_file.read_text())
        tier = sel["tier"]
        chosen = sel.get("champion") or {}
        for rank, r in enumerate(sel["ranking"]):
            ci = r.get("ci95") or [None, None]
            champions.append(
                {
                    "campaign_id": cid,
                    "model": i.model.ref,
                    "rank": rank,
                    "recommended": bool(chosen)
                    and r["cell_id"] == chosen.get("cell_id")
                    and r["config"] == chosen.get("config"),
                    "engine": r["engine"],
                    "config": r["config"],
                    "gpus": r["gpus"],
                    "metric": sel["metric"],
                    "value": r["value"],
                    "ci_lo": ci[0],
                    "ci_hi": ci[1],
                    "concurrency": r["concurrency"],
                    "cell_id": r["cell_id"],
                    "tier": sel["tier"],
                    "eligible": r["eligible"],
                    "reason": r["reason"],
                    "failing_gates": dumps(sel["failing_gates"]),
                }
            )
    if state.phases["8.5"].status == "green" and i.findings:
        from perftune.registry import findings as ledger

        f = ledger.load(Path(i.findings)).get(i.model.ref)
        if f is not None and f.baseline.get("campaign") == cid:
            findings.append(
                {
                    "campaign_id": cid,
                    "model": i.model.ref,
                    "next_lever": f.next_lever,
                    "next_value": f.next_value,
                    "rationale": f.rationale,
                }
            )
    statuses = [p.status for p in state.phases.values()]
    status = (
        "red" if "red" in statuses else "complete" if state.phases["8.5"].status == "green" else "partial"
    )
    gaps = [f"{p.id} {p.name}: {p.status}" for p in state.phases.values() if p.status not in ("green",)]
    campaigns = [
        {
            "campaign_id": cid,
            "model": i.model.ref,
            "gpu": f"{i.hardware.gpus}x{i.hardware.gpu}",
            "engines": ",".join(i.serving.engines),
            "focus": i.slo.focus,
            "created_at": state.created_at,
            "status": status,
            "tier": tier,
            "gaps": dumps(gaps),
            "intent_json": i.model_dump_json(),
            "phases_json": dumps({k: p.status for k, p in state.phases.items()}),
        }
    ]
    return cid, {
        "campaigns": campaigns,
        "cells": cells,
        "trials": trials,
        "requests": requests,
        "champions": champions,
        "findings": findings,
        "roofline": _grounded(roofline_rows(run_dir), state),
        "ledger": ledger_rows(run_dir, cid, i.model.ref),
        "evals": eval_rows(run_dir, cid, state),
        "spec": spec_rows(run_dir, cid, state),
    }


def mean_or_none(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def spec_rows(run_dir: Path, cid: str, state: CampaignState) -> list[dict[str, Any]]:
    """Phase 7's A/B: one row per engine, method, workload and concurrency, with the engine's acceptance
    (None where it reports none), the TPOT and tok/s ratios with their 95% intervals and the verdict."""
    path = run_dir / "phase7" / "specdec.json"
    if not path.exists():
        return []
    rep = json.loads(path.read_text())
    out = []
    for engine, e in rep.get("engines", {}).items():
        for method, m in e.get("methods", {}).items():
            g = m["gate"]
            calls = {x["workload"]: x for x in g.get("calls", [])}
            for c in m["ab"]["cells"]:
                sp, tr = c.get("tpot_speedup_ci95") or [None, None], c.get("tok_s_ratio_ci95") or [None, None]
                call = calls.get(c["workload"]) if c["concurrency"] == g.get("concurrency") else None
                out.append(
                    {
                        "campaign_id": cid,
                        "model": state.intent.model.ref,
                        "engine": engine,
                        "engine_version": e.get("version"),
                        "hardware": e.get("hardware"),
                        "method": method,
                        "k": m["k"],
                        "levers_json": dumps(m["levers"]),
                        "workload": c["workload"],
                        "concurrency": c["concurrency"],
                        "trials": c["trials"],
                        "acceptance_reported": bool(c["accept_length"]),
                        "accept_length": mean_or_none(c["accept_length"]),
                        "accept_rate": mean_or_none(c.get("accept_rate") or []),
                        "accept_per_pos_json": dumps(c.get("accept_per_pos") or []),
                        "standing_tpot_ms": mean_or_none(c["standing_tpot_ms"]),
                        "tpot_ms": mean_or_none(c["tpot_ms"]),
                        "tpot_speedup": c["tpot_speedup"],
                        "tpot_speedup_ci_lo": sp[0],
                        "tpot_speedup_ci_hi": sp[1],
                        "tok_s_ratio": c["tok_s_ratio"],
                        "tok_s_ratio_ci_lo": tr[0],
                        "tok_s_ratio_ci_hi": tr[1],
                        "verdict": m["gate"]["verdict"],
                        "crossover_concurrency": m.get("crossover_concurrency"),
                        "tier": "DRAFT",
                        "tokens_per_step": mean_or_none(c.get("tokens_per_step") or []),
                        "loop_share": c.get("loop_share"),
                        "standing_loop_share": c.get("standing_loop_share"),
                        # the gate's call on this workload (its concurrency only): win, loss,
                        # inconclusive, not measured, or degenerate (left out: its outputs loop)
                        "gate_call": (
                            call["acceptance"]
                            if call and call["acceptance"] == "degenerate"
                            else (call["latency"] if call else None)
                        ),
                        "workload_crossover_concurrency": (m.get("crossover_by_workload") or {}).get(
                            c["workload"]
                        ),
                    }
                )
    return out


def eval_rows(run_dir: Path, cid: str, state: CampaignState) -> list[dict[str, Any]]:
    """Phase 5's scores: one row per weight variant and task, with its 95% interval and, for a variant,
    the delta to the reference paired on the same items (Tango paired score interval, McNemar p)."""
    path = run_dir / "phase5" / "accuracy.json"
    if not path.exists():
        return []
    rep = json.loads(path.read_text())
    out = []
    for name, e in rep.get("weights", {}).items():
        w = state.facts.weights.get(name)
        for task, sc in (e.get("scores") or {}).items():
            p = (e.get("paired") or {}).get(task) or {}
            dci = p.get("ci95") or [None, None]
            out.append(
                {
                    "campaign_id": cid,
                    "model": state.intent.model.ref,
                    "engine": rep.get("engine"),
                    "weights": name,
                    "scheme": w.scheme if w is not None else None,
                    "reference": rep.get("reference"),
                    "api": rep.get("api"),
                    "task": task,
                    "n": sc["n"],
                    "correct": sc["correct"],
                    "score_pct": sc["score_pct"],
                    "ci_lo": sc["ci95"][0],
                    "ci_hi": sc["ci95"][1],
                    "delta_pts": p.get("delta_pts"),
                    "delta_ci_lo": dci[0],
                    "delta_ci_hi": dci[1],
                    "paired_test": "Tango paired score interval + exact McNemar" if p else None,
                    "mcnemar_p": p.get("mcnemar_p"),
                    "decision": p.get("decision", "reference" if name == rep.get("reference") else None),
                    "accuracy_pass": bool(e.get("accuracy_pass")),
                    "ship_decision": e.get("decision"),
                    "tier": "DRAFT",
                }
            )
    return out


def _grounded(rows: list[dict[str, Any]], state: CampaignState) -> list[dict[str, Any]]:
    """Roofline points with the cell's L3 grounding where it has one (measured DRAM bytes/s)."""
    out = []
    for r in rows:
        c = state.cells.get(r["cell_id"])
        g = c is not None and c.dram_tb_s is not None
        out.append(
            {
                **r,
                "sol_rigor": c.sol_rigor if c is not None and g else r["sol_rigor"],
                "measured_tb_s": c.dram_tb_s if c is not None and g else None,
                "sol_bytes_pct": c.sol_bytes_pct if c is not None and g else None,
            }
        )
    return out


def ledger_rows(run_dir: Path, cid: str, model: str) -> list[dict[str, Any]]:
    """Phase 2.5's ledger rows, each with the artifact paths it cites (relative to the bundle)."""
    path = run_dir / "findings" / "ledger.json"
    if not path.exists():
        return []
    return [
        {
            "campaign_id": cid,
            "model": model,
            "rank": r["rank"],
            "engine": r["engine"],
            "rule": r["rule"],
            "kind": r["kind"],
            "lever": r["lever"],
            "value": r["value"],
            "predicted": r["predicted"],
            "why": r["why"],
            "score": r["score"],
            "artifacts": ", ".join(c["artifact"] for c in r["citations"]),
            "citations_json": dumps(r["citations"]),
            "sol_rigor": r["sol_rigor"],
            "tier": r["tier"],
            "simulated": r["simulated"],
        }
        for r in json.loads(path.read_text())
    ]


def publish(run_dir: Path, lake: Path) -> dict[str, int]:
    cid, rows = bundle_rows(run_dir)
    return publish_rows(lake, cid, rows)
