"""Distillation at equal student time: `small` trained against a teacher vs `small` alone.

    .venv/bin/python -m benchmarks.distill_bench                      # trains the teacher once
    .venv/bin/python -m benchmarks.distill_bench --budget-s 600 --seeds 42 7

Both students get the same ``train.time_budget_s`` (``--budget-s``; the default 360 s is
the default 32-epoch `small` run's 327 s on the AVX-512 EPYC plus its export), and the
Trainer plans each run's steps and cosine schedule from its own measured step time, so
the distilled student pays for the teacher's forward pass with fewer steps: the
comparison is at equal student wall-clock time, not at equal steps. Each seed trains the
pair back to back.

The teacher is the export at ``--teacher`` (a Trainer's Format-Serving dir, its Model
dir or a pushed version). If none is there yet, one is trained (``--teacher-size``,
default medium, with the config's ``TrainConfig`` and no time budget: 32 epochs, ~15.5
minutes on that machine), exported there and reused by later runs.

Data and scoring as ``benchmarks.train_bench``: the pipeline's default synthetic data
split like CocoExampleGen, COCO metrics of each exported model on the eval split through
``serving_examples``. Prints a row per model and writes
``benchmarks/results/distill_bench.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import machine
from benchmarks.report import print_table, write_report
from benchmarks.train_bench import METRICS, RESULTS_DIR, bench_data, score, train_and_export
from data import synth
from trainer.config import MODEL_SIZES, SERVING_SUBDIR, TrainConfig
from trainer.distill import teacher_dir
from trainer.export import ASSETS_EXTRA, HPARAMS_FILE

DEFAULT_TEACHER_DIR = RESULTS_DIR / "teacher"
DEFAULT_BUDGET_S = 360.0
STUDENT_SIZE = "small"


def ensure_teacher(export_dir: str, size: str, hparams: dict, splits: dict[str, str]
                   ) -> tuple[str, dict]:
    """The teacher's export folder, trained and exported first if ``export_dir`` has none,
    and its row (how it was trained, its scores)."""
    try:
        found = teacher_dir(export_dir, None)
    except ValueError:
        found = None
    if found is None:
        config = _config(hparams, model_size=size, time_budget_s=0.0, teacher="")
        print(f"No teacher at {export_dir}: training a {size!r} teacher there first")
        with tempfile.TemporaryDirectory(prefix="distill-bench-teacher-") as work:
            _, serving_dir, _ = train_and_export(config, splits, work)
            found = os.path.join(export_dir, SERVING_SUBDIR)
            shutil.copytree(serving_dir, found)
    with open(os.path.join(found, ASSETS_EXTRA, HPARAMS_FILE)) as f:
        recorded = json.load(f)
    row = {"model": f"teacher ({recorded['model_size']})", "seed": recorded["seed"],
           "steps": recorded.get("train_steps"), "step_ms": _ms(recorded.get("step_seconds")),
           "train_seconds": recorded.get("train_seconds"), "final_distill_loss": None,
           **_scores(found, splits, recorded["class_names"])}
    return found, row


def bench_student(hparams: dict, splits: dict[str, str], seed: int, budget_s: float,
                  teacher: str | None) -> dict:
    """Trains, exports and scores `small` in ``budget_s``, with ``teacher`` or alone."""
    config = _config(hparams, model_size=STUDENT_SIZE, time_budget_s=budget_s, seed=seed,
                     teacher=teacher or "")
    with tempfile.TemporaryDirectory(prefix="distill-bench-student-") as work:
        result, serving_dir, seconds = train_and_export(config, splits, work)
        scores = _scores(serving_dir, splits, list(config.class_names))
    return {"model": f"{STUDENT_SIZE} + teacher" if teacher else f"{STUDENT_SIZE} alone",
            "seed": seed, "steps": result.steps, "step_ms": _ms(result.step_seconds),
            "train_seconds": round(seconds, 1), "final_distill_loss": result.final_distill_loss,
            **scores, "config": config.to_dict()}


def _config(hparams: dict, **fields) -> TrainConfig:
    return TrainConfig.from_dict({**hparams, "class_names": list(synth.CLASS_NAMES), **fields})


def _ms(seconds: float | None) -> float | None:
    """ms per step; None when the run was too short to time (0 s recorded)."""
    return round(1000 * seconds, 1) if seconds else None


def _scores(serving_dir: str, splits: dict[str, str], class_names: list[str]) -> dict:
    metrics = score(serving_dir, splits["eval"], class_names)
    return {m: round(metrics[m], 4) for m in METRICS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default=str(DEFAULT_TEACHER_DIR),
                        help="the teacher's export; trained there first if missing")
    parser.add_argument("--teacher-size", default="medium", choices=MODEL_SIZES)
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                        help="train.time_budget_s of each student")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="TrainConfig field=value for teacher and students, e.g. "
                             "distill_weight=0.5")
    parser.add_argument("--config", default="default", help="pipeline config for the data")
    parser.add_argument("--out", default=str(RESULTS_DIR / "distill_bench.json"))
    args = parser.parse_args()

    run_config, splits = bench_data(args.config, args.overrides)
    hparams = dict(run_config.train.hparams)
    teacher, teacher_row = ensure_teacher(args.teacher, args.teacher_size, hparams, splits)
    rows = [teacher_row]
    for seed in args.seeds:
        for with_teacher in (None, teacher):
            rows.append(bench_student(hparams, splits, seed, args.budget_s, with_teacher))

    header = ("model", "seed", "steps", "step ms", "train s", *METRICS, "distill loss")
    print(f"\n{machine.summary(machine.describe())}; student budget {args.budget_s:.0f} s; "
          f"teacher {teacher}")
    print_table(header, [
        (r["model"], r["seed"], r["steps"], r["step_ms"], r["train_seconds"],
         *(f"{r[m]:.3f}" for m in METRICS),
         "" if r["final_distill_loss"] is None else f"{r['final_distill_loss']:.4f}")
        for r in rows])
    write_report({"machine": machine.describe(), "dataset": run_config.data.synthetic.key,
                  "budget_s": args.budget_s, "teacher": teacher, "train_config": hparams,
                  "results": rows}, args.out)


if __name__ == "__main__":
    main()
