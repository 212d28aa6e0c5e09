"""Phase 6's pieces that are perftune's own: the training gate, the job's steps for speculators, the
metrics read back from its records, and the job harness (resumable steps, an honest failure)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from perftune.draft import job as jobmod
from perftune.draft.gate import MIN_ACC0, judge
from perftune.draft.job import DraftJob, run_job
from perftune.draft.steps import aux_layers, loss_mask
from perftune.draft.trainers import TRAINERS, Speculators, Step

CONFIG = {"model_type": "llama", "num_hidden_layers": 30, "vocab_size": 49152, "hidden_size": 576}


def _job(tmp: Path, **kw: object) -> DraftJob:
    target = tmp / "target"
    target.mkdir(exist_ok=True)
    (target / "config.json").write_text(json.dumps(CONFIG))
    args = {"method": "eagle3", "target": str(target), "data": str(tmp / "p.jsonl"), "python": sys.executable,
            "out_dir": str(tmp / "job")}  # fmt: skip
    return DraftJob.model_validate({**args, **kw})


def test_a_learning_head_passes_and_a_degenerate_one_is_named() -> None:
    ok = judge([16.0, 15.0, 12.0, 10.0, 9.0, 8.5], 0.31)
    assert ok.passed and ok.first_loss == 16.0 and ok.last_loss == 8.5 and ok.acc0 == 0.31
    stuck = judge([16.0, 15.9, 16.1, 16.0, 16.0], 0.0)
    assert not stuck.passed
    assert any("the loss did not fall" in r for r in stuck.reasons)
    assert any(f"at or below {MIN_ACC0:.0%}" in r for r in stuck.reasons)
    assert "NaN" in judge([16.0, float("nan"), 9.0], 0.2).reasons[0]
    assert not judge([3.0], None).passed and len(judge([3.0], None).reasons) == 2


def test_eagle3_layers_and_the_assistant_mask() -> None:
    assert aux_layers(30) == [2, 15, 27, 30] and aux_layers(32) == [2, 16, 29, 32]
    assert loss_mask(3, 7) == [0, 0, 0, 1, 1, 1, 1]


def test_speculators_steps_run_offline_with_the_classic_layout(tmp_path: Path) -> None:
    job = _job(tmp_path, epochs=2, draft_vocab=64000)
    steps = Speculators().steps(job)
    assert [s.name for s in steps] == ["respond", "pretok", "prepare", "hidden", "train"]
    assert all(s.env["HF_HUB_OFFLINE"] == "1" and "PYTHONPATH" in s.env for s in steps)
    train = steps[-1].argv
    assert train[:5] == [
        sys.executable,
        "-m",
        "perftune.draft.steps",
        "train",
        str(tmp_path / "job/job.json"),
    ]
    i = train.index("--target-layer-ids")
    assert train[i + 1 : i + 4] == ["2", "15", "27"]
    assert train[train.index("--draft-vocab-size") + 1] == "49152"  # never above the target's vocab
    assert train[train.index("--on-missing") + 1] == "raise"  # offline: no engine to fill gaps
    assert "--no-norm-output" in train and "--num-workers" not in train  # GPU defaults
    # the eager loss on a GPU too: speculators 0.9's fused Triton loss fails under torch 2.11's dynamo
    assert train[train.index("--loss-implementation") + 1] == "eager"
    assert "--num-workers" in Speculators().steps(_job(tmp_path, device="cpu"))[-1].argv
    assert steps[2].argv[1:4] == ["-m", "speculators", "prepare-data"]


def test_metrics_are_read_from_speculators_records(tmp_path: Path) -> None:
    job = _job(tmp_path)
    out = Path(job.out_dir)
    out.mkdir()
    recs = [
        {"step": 1, "train": {"loss": 16.2, "full_acc_0": 0.0}},
        {"step": 2, "train": {"loss": 14.0, "full_acc_0": 0.05}},
        "not json",
        {"step": 3, "val": {"loss_epoch": 13.0, "full_acc_0_epoch": 0.12}, "epoch": 0},
        {"step": 4, "train": {"loss": 11.5}},
    ]
    (out / "metrics.jsonl").write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in recs))
    losses, acc0, src = Speculators().metrics(job)
    assert losses == [16.2, 14.0, 11.5] and acc0 == 0.12 and src == str(out / "metrics.jsonl")
    best = out / "checkpoints" / "checkpoint_best"
    best.mkdir(parents=True)
    (best / "val_metrics.json").write_text(json.dumps({"full_acc_0_epoch": 0.2}))
    assert Speculators().metrics(job)[1] == 0.2  # the checkpoint the engine loads wins


class _Scripted:
    """A test double of a trainer: its steps are small Python commands, so the harness is tested
    without torch. Never registered outside this test."""

    name = "scripted"

    def __init__(self, fail_at: str | None = None) -> None:
        self.fail_at = fail_at

    def available(self, python: str) -> str | None:
        return None

    def steps(self, job: DraftJob) -> list[Step]:
        def step(name: str) -> Step:
            code = (
                "import sys; sys.exit(3)" if name == self.fail_at else f"open('{name}.ran', 'a').write('x')"
            )
            return Step(name, [sys.executable, "-c", code])

        return [step("a"), step("b")]

    def export_dir(self, job: DraftJob) -> Path:
        return Path(job.out_dir) / "draft"

    def metrics(self, job: DraftJob) -> tuple[list[float], float | None, str | None]:
        return [9.0, 4.0], 0.4, "scripted"


def test_the_harness_resumes_and_reports_failure_honestly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = _job(tmp_path)
    out = Path(job.out_dir)
    monkeypatch.setitem(TRAINERS, "speculators", _Scripted(fail_at="b"))
    res = run_job(job)
    assert res.status == "failed" and res.out_path is None and "step b exited 3" in (res.error or "")
    assert (out / "steps/a.done").exists() and not (out / "steps/b.done").exists()
    assert json.loads((out / jobmod.RESULT_NAME).read_text())["status"] == "failed"
    monkeypatch.setitem(TRAINERS, "speculators", _Scripted())
    res = run_job(job)  # run again: a is not re-run, b is
    assert res.status == "ok" and res.out_path == str(out / "draft") and res.acc0 == 0.4
    assert (out / "a.ran").read_text() == "x" and (out / "b.ran").read_text() == "x"
    assert "step a:" not in (out / jobmod.LOG_NAME).read_text().split("step b: exit 3")[-1]


def test_a_missing_trainer_fails_in_one_line(tmp_path: Path) -> None:
    job = _job(tmp_path, python=str(tmp_path / "no-python"))
    res = run_job(job)
    assert res.status == "failed" and "cannot run" in (res.error or "")
    assert "PERFTUNE_DRAFT_PYTHON" in (res.error or "")
    why = Speculators().available(sys.executable)
    assert why is None or why.startswith(f"speculators is not available in {sys.executable}")
