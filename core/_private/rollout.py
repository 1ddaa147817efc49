"""Rollouts on an endpoint: canary steps judged on live metrics, blue/green, rollback.

A rollout moves an endpoint's traffic from its stable service to a candidate service.
Each canary step sets the candidate's weight, then analyses the candidate every
``interval_s`` over the last ``window_s`` seconds until the step's ``pause_s`` is over:
a failed analysis rolls back at once, so a bad candidate is caught within one interval.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from servekit.core._private import telemetry

logger = logging.getLogger("servekit.rollout")

Outcome = Literal["successful", "failed", "inconclusive"]


class Thresholds(BaseModel):
    """When a candidate fails its analysis. Absolute limits, and limits relative to the
    stable version over the same window (only when the stable version had traffic)."""

    model_config = ConfigDict(extra="forbid")

    max_error_rate: float = Field(default=0.01, ge=0, le=1)
    max_error_rate_increase: float = Field(
        default=0.01, ge=0, description="candidate error rate minus stable's, at most"
    )
    max_p99_ms: float | None = Field(default=None, gt=0)
    max_p99_ratio: float | None = Field(
        default=2.0, gt=0, description="candidate p99 / stable p99, at most"
    )
    min_requests: int = Field(default=20, ge=1, description="fewer: inconclusive")


@dataclass
class Analysis:
    """One analysis of a candidate against its thresholds and the stable version."""

    outcome: Outcome
    reasons: list[str]
    candidate: dict[str, Any]
    stable: dict[str, Any]


def analyze(
    runtime: Any,
    endpoint: str,
    candidate: str,
    stable: str | None,
    *,
    window_s: float = 30.0,
    thresholds: Thresholds | None = None,
) -> Analysis:
    """Judge ``candidate`` on the endpoint's metrics of the last ``window_s`` seconds."""
    with telemetry.span(f"rollout analyze {endpoint}") as current:
        found = _analyze(runtime, endpoint, candidate, stable, window_s, thresholds)
        current.set_attribute("servekit.rollout.outcome", found.outcome)
        return found


def _analyze(
    runtime: Any,
    endpoint: str,
    candidate: str,
    stable: str | None,
    window_s: float,
    thresholds: Thresholds | None,
) -> Analysis:
    limits = thresholds or Thresholds()
    versions = runtime.endpoint_stats(endpoint, window_s)["versions"]
    mine = versions.get(candidate) or {"requests": 0, "errors": 0}
    theirs = (versions.get(stable) if stable else None) or {"requests": 0, "errors": 0}
    if mine["requests"] < limits.min_requests:
        why = f"{mine['requests']} requests in {window_s:g}s, fewer than {limits.min_requests}"
        return Analysis("inconclusive", [why], mine, theirs)
    reasons = []
    rate, p99 = mine["error_rate"], mine["p99_ms"]
    if rate > limits.max_error_rate:
        reasons.append(f"error rate {rate:.3f} above {limits.max_error_rate:g}")
    if theirs["requests"] >= limits.min_requests:
        if rate - theirs["error_rate"] > limits.max_error_rate_increase:
            reasons.append(f"error rate {rate:.3f} against stable {theirs['error_rate']:.3f}")
        ratio = limits.max_p99_ratio
        if ratio is not None and p99 > ratio * theirs["p99_ms"]:
            reasons.append(f"p99 {p99:.1f} ms above {ratio:g}x stable's {theirs['p99_ms']:.1f}")
    if limits.max_p99_ms is not None and p99 > limits.max_p99_ms:
        reasons.append(f"p99 {p99:.1f} ms above {limits.max_p99_ms:g} ms")
    return Analysis("failed" if reasons else "successful", reasons, mine, theirs)


@dataclass
class Step:
    """One row of a rollout's record: the weight set, what the analysis found, the action."""

    weight: float
    outcome: str
    action: str
    reasons: list[str] = field(default_factory=list)
    candidate: dict[str, Any] = field(default_factory=dict)
    stable: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)


@dataclass
class RolloutResult:
    """How a rollout ended (``promoted`` or ``rolled_back``) and every step on the way."""

    endpoint: str
    stable: str | None
    candidate: str
    decision: Literal["promoted", "rolled_back"]
    steps: list[Step]

    def table(self) -> list[dict[str, Any]]:
        """One flat row per step (for a Prefect table artifact or a log)."""
        rows = []
        for step in self.steps:
            c, s = step.candidate, step.stable
            rows.append(
                {
                    "time": time.strftime("%H:%M:%S", time.localtime(step.at)),
                    "weight %": step.weight,
                    "outcome": step.outcome,
                    "action": step.action,
                    "requests": c.get("requests", 0),
                    "error rate": _fmt(c.get("error_rate")),
                    "p99 ms": _fmt(c.get("p99_ms")),
                    "stable error rate": _fmt(s.get("error_rate")),
                    "stable p99 ms": _fmt(s.get("p99_ms")),
                    "why": "; ".join(step.reasons),
                }
            )
        return rows

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Rollout:
    """Moves ``endpoint`` from ``stable`` to ``candidate`` (both services). Example::

    rollout = Rollout(runtime, "iris", stable="iris-v1", candidate="iris-v2")
    result = rollout.canary([10, 50, 100], pause_s=60)
    print(result.decision)  # "promoted" or "rolled_back"
    """

    def __init__(
        self,
        runtime: Any,
        endpoint: str,
        *,
        stable: str | None,
        candidate: str,
        thresholds: Thresholds | None = None,
        window_s: float = 30.0,
        interval_s: float = 10.0,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.runtime = runtime
        self.endpoint = endpoint
        self.stable = stable
        self.candidate = candidate
        self.thresholds = thresholds or Thresholds()
        self.window_s = window_s
        self.interval_s = interval_s
        self.say = say or logger.info
        self.steps: list[Step] = []

    def set_traffic(self, weight: float) -> None:
        """Give the candidate ``weight`` percent and the stable service the rest."""
        weights = {self.candidate: weight}
        if self.stable is not None and self.stable != self.candidate:
            weights[self.stable] = 100.0 - weight
        self.route(weights)
        self.steps.append(Step(weight, "-", "set weight"))
        self.say(f"{self.endpoint}: {self.candidate} at {weight:g}%")

    def route(self, weights: dict[str, float]) -> None:
        """Every traffic change goes through here (a Prefect flow makes each one a task)."""
        attributes = {f"servekit.weight.{name}": weight for name, weight in weights.items()}
        with telemetry.span(f"rollout route {self.endpoint}", attributes):
            self.runtime.route(self.endpoint, weights)

    def analyze(self) -> Analysis:
        return analyze(
            self.runtime,
            self.endpoint,
            self.candidate,
            self.stable,
            window_s=self.window_s,
            thresholds=self.thresholds,
        )

    def promote(self) -> RolloutResult:
        """All traffic to the candidate."""
        self.route({self.candidate: 100.0})
        self.steps.append(Step(100.0, "-", "promoted"))
        self.say(f"{self.endpoint}: promoted {self.candidate}")
        return self._result("promoted")

    def rollback(self, why: Analysis | None = None) -> RolloutResult:
        """All traffic back to the stable service."""
        if self.stable is None:
            raise ValueError(f"{self.endpoint!r} has no stable service to roll back to")
        self.route({self.stable: 100.0})
        reasons = why.reasons if why else []
        self.steps.append(Step(0.0, why.outcome if why else "-", "rolled back", reasons))
        self.say(f"{self.endpoint}: rolled back to {self.stable} ({'; '.join(reasons)})")
        return self._result("rolled_back")

    def canary(
        self, steps: list[float], *, pause_s: float = 60.0, max_inconclusive: int = 3
    ) -> RolloutResult:
        """Raise the candidate's weight step by step; after each step, analyse it every
        ``interval_s`` for ``pause_s``. A failed analysis rolls back at once; a step
        still inconclusive after ``max_inconclusive`` extra intervals rolls back too."""
        with telemetry.span(f"rollout canary {self.endpoint}", self._attributes()) as current:
            result = self._canary(steps, pause_s, max_inconclusive)
            current.set_attribute("servekit.rollout.decision", result.decision)
            return result

    def _canary(self, steps: list[float], pause_s: float, max_inconclusive: int) -> RolloutResult:
        for weight in steps:
            self.set_traffic(weight)
            if weight >= 100:  # nothing left to compare against: the last step promotes
                analysis = self._watch(pause_s, max_inconclusive)
                if analysis.outcome != "successful":
                    return self.rollback(analysis)
                return self.promote()
            analysis = self._watch(pause_s, max_inconclusive)
            if analysis.outcome != "successful":
                return self.rollback(analysis)
        return self.promote()

    def blue_green(
        self, smoke_test: Callable[[str], Any], *, pause_s: float = 30.0
    ) -> RolloutResult:
        """Run ``smoke_test(candidate_url)`` (raise or return False to fail); if it passes,
        switch all traffic at once, watch for ``pause_s`` and switch back on failure."""
        with telemetry.span(f"rollout blue_green {self.endpoint}", self._attributes()) as current:
            result = self._blue_green(smoke_test, pause_s)
            current.set_attribute("servekit.rollout.decision", result.decision)
            return result

    def _attributes(self) -> dict[str, str]:
        return {
            "servekit.rollout.candidate": self.candidate,
            "servekit.rollout.stable": str(self.stable),
        }

    def _blue_green(self, smoke_test: Callable[[str], Any], pause_s: float) -> RolloutResult:
        url = self.runtime.url(self.candidate)
        try:
            passed = smoke_test(url) is not False
            reasons = [] if passed else ["the smoke test returned False"]
        except Exception as exc:
            passed, reasons = False, [f"the smoke test failed: {exc}"]
        self.steps.append(Step(0.0, "successful" if passed else "failed", "smoke test", reasons))
        if not passed:
            self.say(f"{self.endpoint}: {self.candidate} failed its smoke test: {reasons[0]}")
            return self._result("rolled_back")
        self.set_traffic(100.0)
        analysis = self._watch(pause_s, max_inconclusive=0, final=True)
        if analysis.outcome == "failed":
            return self.rollback(analysis)
        return self.promote()

    def _watch(self, pause_s: float, max_inconclusive: int, final: bool = False) -> Analysis:
        """Analyse every interval until the pause is over; stop early on a failure."""
        weight = self.runtime.traffic(self.endpoint).get(self.candidate, 0.0)
        deadline = time.monotonic() + pause_s
        extra = 0
        while True:
            time.sleep(min(self.interval_s, max(0.0, deadline - time.monotonic())) or 0.01)
            analysis = self.analyze()
            if analysis.outcome == "failed":
                break
            if time.monotonic() < deadline:
                continue
            if analysis.outcome == "inconclusive" and extra < max_inconclusive:
                extra += 1
                deadline += self.interval_s
                continue
            if final and analysis.outcome == "inconclusive":
                analysis.outcome = "successful"  # blue/green: no traffic, nothing against it
            break
        action = "continue" if analysis.outcome == "successful" else "stop"
        found = (analysis.reasons, analysis.candidate, analysis.stable)
        self.steps.append(Step(weight, analysis.outcome, action, *found))
        self.say(
            f"{self.endpoint}: {self.candidate} at {weight:g}%: {analysis.outcome}"
            + (f" ({'; '.join(analysis.reasons)})" if analysis.reasons else "")
        )
        return analysis

    def _result(self, decision: Literal["promoted", "rolled_back"]) -> RolloutResult:
        return RolloutResult(self.endpoint, self.stable, self.candidate, decision, self.steps)


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3g}"
