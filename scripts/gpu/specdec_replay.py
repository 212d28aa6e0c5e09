#!/usr/bin/env python3
"""Phase 7's analysis over a phase-7 method folder brought back from the GPU host, offline.

    scripts/gpu/specdec_replay.py METHOD_DIR --model REF --hardware LABEL --version V [--out DIR]

METHOD_DIR is `RUN/phase7/ENGINE/METHOD` (journal.jsonl + trials/): the deploys the journal records are
replayed through perftune's own A/B, gate, crossover and report code (perftune.campaign.specdec) with no
engine, as `perftune specdec` would have computed them had the run ended there. A deploy the journal
does not record (the lease ended while it ran) contributes nothing: its arm has fewer trials in the
cells it missed, and the report says how many each cell has. Nothing is re-measured or made up: every
figure comes from a trial folder the bench client wrote on the GPU host. Writes specdec.json and
SPECDEC.md into --out (default METHOD_DIR).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from perftune.campaign.specdec import _ab, _decide, method_report, specdec_md
from perftune.tune.arms import Arm
from perftune.tune.search import Measure
from perftune.util.atomic import write_text


class _Replay:
    """The _Runner interface over a journal: each (arm, trial) deploy's measures, or none."""

    def __init__(self, method_dir: Path) -> None:
        self.dir = method_dir
        self.deploys: dict[tuple[str, int], list[Measure]] = {}
        self.arms: dict[str, dict[str, Any]] = {}
        for line in (method_dir / "journal.jsonl").read_text().splitlines():
            e = json.loads(line)
            engine, name, levers, _concs, trial, screening, _wls = json.loads(e["key"])
            if screening or e.get("failure"):
                continue
            self.arms[name] = {k: v for k, v in levers}
            self.deploys[(name, int(trial))] = [Measure(**m) for m in e["measures"]]
        self.engine = engine
        self.asked: list[tuple[str, int]] = []

    def run(self, arm: Arm, concurrencies: list[int], trial: int, screening: bool) -> list[Measure]:
        self.asked.append((arm.name, trial))
        return [m for m in self.deploys.get((arm.name, trial), []) if m.concurrency in concurrencies]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("method_dir", type=Path)
    ap.add_argument("--model", required=True)
    ap.add_argument("--hardware", required=True)
    ap.add_argument("--version", required=True)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    r = _Replay(a.method_dir)
    if "standing" not in r.arms or len(r.arms) != 2:
        print(f"error: {a.method_dir}: the journal needs the standing arm and one candidate", file=sys.stderr)
        return 2
    cand_name = next(n for n in r.arms if n != "standing")
    standing = Arm(engine=r.engine, name="standing", levers=r.arms["standing"])
    cand = Arm(engine=r.engine, name=cand_name, levers=r.arms[cand_name])
    wls = sorted({m.workload for ms in r.deploys.values() for m in ms})
    concs = sorted({m.concurrency for ms in r.deploys.values() for m in ms})
    intent = SimpleNamespace(
        model=SimpleNamespace(ref=a.model),
        spec=SimpleNamespace(concurrencies=concs, workloads=wls),
        suite=SimpleNamespace(trials=3, isl="per workload", osl=128),
    )
    ctx: Any = SimpleNamespace(intent=intent)
    ab = _ab(ctx, cast(Any, r), standing, cand)  # the _Runner interface: run()
    missing = sorted(set(r.asked) - set(r.deploys))
    ab["replayed"] = {
        "deploys": len(r.deploys),
        "missing_deploys": [f"{n} trial {t}" for n, t in missing],
        "note": "analysed offline from the journal (scripts/gpu/specdec_replay.py): a deploy it does not "
        "record is missing, its cells have fewer trials",
    }
    method = str(cand.levers["spec-method"])
    gate = _decide(ab, min(concs))
    rep = {
        "engines": {
            r.engine: {
                "version": a.version,
                "hardware": a.hardware,
                "standing_levers": standing.levers,
                "methods": {method: method_report(cand, [], ab, gate)},
            }
        }
    }
    out = a.out or a.method_dir
    write_text(out / "specdec.json", json.dumps(rep, indent=2, default=str) + "\n")
    cut = ", ".join(ab["replayed"]["missing_deploys"]) or "none"
    note = f"\nReplayed offline from the journal ({len(r.deploys)} deploys; missing: {cut}).\n"
    write_text(out / "SPECDEC.md", specdec_md(ctx, rep) + note)
    print(f"{method} K={cand.levers['spec-k']} vs {standing.levers}: {gate['verdict']}")
    for reason in gate["reasons"]:
        print(f"- {reason}")
    if missing:
        print(f"missing deploys: {', '.join(ab['replayed']['missing_deploys'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
