"""What a stage change needs. Every check returns all the rules it broke, in words.

Pure functions over ``VersionFacts`` (gathered from ML Metadata by ``registry``), so a
refused promotion can name every rule it broke at once, and the rules are testable
without a store.

- canary: the version is blessed (by the Evaluator's newest evaluation of it), complete
  on disk, and not already canary or stable;
- stable: it is the canary (a version reaches users through canary), blessed, approved
  after that blessing, complete on disk, and, when a stable version exists, a recorded
  comparison of the two made since it became canary covers at least
  ``release.min_compare_requests`` requests within the ``release`` tolerances;
- rollback: a previous stable version exists (or ``--to`` names one) and is on disk;
- approve: the version is blessed.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

from pipelines.registry.store import Record
from pipelines.settings import ReleaseSettings

CANDIDATE, CANARY, STABLE, RETIRED = "candidate", "canary", "stable", "retired"
STAGES = (CANDIDATE, CANARY, STABLE, RETIRED)
PROMOTION_TARGETS = (CANARY, STABLE)


class RefusedError(Exception):
    """A stage change the rules do not allow; ``problems`` lists every broken rule."""

    def __init__(self, action: str, problems: list[str]):
        self.action = action
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"refused: {action}\n{lines}")


@dataclasses.dataclass(frozen=True)
class VersionFacts:
    """What the rules look at for one version."""

    version: str
    stage: str
    path: str  # the version's directory in the serving base path
    on_disk: bool  # complete (saved_model.pb present)
    blessed: bool
    blessing_id: int | None  # the newest ModelBlessing artifact
    blessing_time: float | None  # seconds since the epoch
    approval: Record | None  # the newest approval
    canary_record: Record | None  # the transition that made it canary (if it is)


def when(seconds: float | None) -> str:
    """A record time as people read it (UTC, to the second)."""
    if seconds is None:
        return "an unknown time"
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime(
        "%Y-%m-%d %H:%M:%S UTC")


def _blessing_problems(f: VersionFacts) -> list[str]:
    if f.blessed:
        return []
    if f.blessing_id is None:
        return [f"version {f.version} has no blessing from the Evaluator recorded in ML "
                "Metadata"]
    return [f"version {f.version} is not blessed: the Evaluator's latest evaluation of its "
            f"model (ModelBlessing {f.blessing_id}, {when(f.blessing_time)}) did not pass "
            "the gates (`sightline report` shows why)"]


def disk_problems(f: VersionFacts) -> list[str]:
    if f.on_disk:
        return []
    return [f"version {f.version} is missing or incomplete on disk ({f.path} has no "
            "saved_model.pb): a server could not load it"]


def for_approval(f: VersionFacts) -> list[str]:
    return _blessing_problems(f)


def for_canary(f: VersionFacts) -> list[str]:
    problems = []
    if f.stage in (CANARY, STABLE):
        problems.append(f"version {f.version} is already {f.stage}")
    return problems + _blessing_problems(f) + disk_problems(f)


def for_stable(f: VersionFacts, stable: str | None, comparison: Record | None,
               settings: ReleaseSettings) -> list[str]:
    """Every rule promotion to stable breaks (an empty list: allowed).

    ``stable``: the current stable version, if any; ``comparison``: the newest recorded
    comparison of ``stable`` (baseline) and this version (candidate).
    """
    problems = []
    if f.stage == STABLE:
        return [f"version {f.version} is already stable"]
    if f.stage != CANARY:
        problems.append(f"version {f.version} is {f.stage}, not canary: promote it to canary "
                        f"first (`sightline models promote {f.version} --to canary`)")
    problems += _blessing_problems(f)
    if f.approval is None:
        problems.append(f"version {f.version} has no approval: record one with "
                        f"`sightline models approve {f.version} --reason ...`")
    elif f.blessing_time is not None and f.approval.time <= f.blessing_time:
        problems.append(
            f"the approval of version {f.version} (by {f.approval.actor}, "
            f"{when(f.approval.time)}) is older than its blessing ({when(f.blessing_time)}): "
            "the model was evaluated again after it was approved; review the new "
            "evaluation and approve again")
    problems += disk_problems(f)
    if stable is not None and f.stage == CANARY:
        problems += evidence_problems(f, stable, comparison, settings)
    return problems


def evidence_problems(f: VersionFacts, stable: str, comparison: Record | None,
                      settings: ReleaseSettings) -> list[str]:
    """The canary evidence: a passing comparison with the stable version, made since
    this version became canary."""
    hint = (f"serve with --shadow_fraction or --canary_fraction, then run "
            f"`sightline models compare {stable} {f.version}`")
    since = f.canary_record
    if comparison is None or (since is not None and comparison.id < since.id):
        after = f" since it became canary ({when(since.time)})" if since else ""
        return [f"no canary or shadow comparison of version {f.version} with stable version "
                f"{stable} recorded{after}: {hint}"]
    problems = check_report(comparison.report, settings)  # today's settings, not the old
    return [f"comparison {comparison.id} ({when(comparison.time)}): {p}" for p in problems]


def check_report(report: dict[str, Any], settings: ReleaseSettings) -> list[str]:
    """Where a ``compare`` report falls short of the ``release`` settings."""
    problems = []
    count, what = evidence_count(report)
    if count < settings.min_compare_requests:
        problems.append(f"it covers {count} {what}; release.min_compare_requests is "
                        f"{settings.min_compare_requests}")
    agreement = report.get("agreement")
    if agreement is not None and agreement < settings.min_agreement:
        problems.append(f"detections agree on {agreement:.1%} of {report['images_paired']} "
                        f"paired images; release.min_agreement is {settings.min_agreement:.0%}")
    for name, row in sorted(report.get("classes", {}).items()):
        shift = row.get("score_shift")
        if shift is not None and row.get("gated", True) and abs(shift) > \
                settings.max_score_shift:
            problems.append(f"class {name!r}: mean score shifted by {shift:+.3f}; "
                            f"release.max_score_shift is {settings.max_score_shift}")
    ratio = report.get("latency_ratio")
    if ratio is not None and ratio > settings.max_latency_ratio:
        problems.append(f"median latency is {ratio:.2f}x the stable version's; "
                        f"release.max_latency_ratio is {settings.max_latency_ratio}")
    return problems


def evidence_count(report: dict[str, Any]) -> tuple[int, str]:
    """The requests a comparison's evidence rests on, and what they are."""
    if report.get("mode") == "shadow":
        return report["requests"]["paired"], "shadow-paired requests"
    return report["requests"]["candidate"], "canary requests"
