"""What a study measures and what it claims: its Metric, its Finding, further ExtraFindings, its References.

Each class checks itself when its study is registered (`check(study)`, called by Study), so a bad value is
refused in one line that names the study, the field, the value and what is allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from numbers import Real
from typing import Any

from dynamics.config import SCALES

from .errors import refuse

METRIC_KINDS = ("distance", "tas", "epochs_to_target")
COMPARISONS = ("trend", "better", "best", "threshold")
DIRECTIONS = ("increasing", "decreasing")
EXTRA_KINDS = ("cross-scale-gap", "cross-scale-match", "non-inferior", "stability", "trend")
# per ExtraFinding kind: the params it reads (all required but those in OPTIONAL_PARAMS)
EXTRA_PARAMS = {"cross-scale-gap": ("arms", "scales"), "cross-scale-match": ("treatment", "control", "margin"),
                "non-inferior": ("treatment", "control", "margin"), "stability": ("phase_tag",),
                "trend": ("direction", "control", "zero")}
OPTIONAL_PARAMS = ("phase_tag", "zero")

# The bars, one place: what a reference run must reach for a study's verdict to count (share of noise-to-data).
V_BAR = 0.10  # 32-NFE v of a run trained on v (the v-only parents, vanilla's v): the calibrated vanilla is at 8%
U_BAR = 0.20  # 1-NFE u of a full-length MeanFlow run (vanilla, k = 1, k = 0): the calibrated vanilla is at 10%
FINE_TUNE_BAR = 0.30  # 1-NFE u of O1's u-only fine-tunes, which never see the joint objective
SMALL_DT_V_BAR = 0.20  # 32-NFE v of O3's small-dt u-only warm-up: O2 says small dt builds v, not that it matches v-only


def _text(study: str, name: str, value: Any, empty_ok: bool = False) -> None:
    if not isinstance(value, str) or not (value or empty_ok):
        raise refuse(study, name, value, "give a string" if empty_ok else "give a non-empty string")


def _number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _share(study: str, name: str, value: Any) -> None:
    if not (_number(value) and 0.0 < value <= 1.0):
        raise refuse(study, name, value, "give a share of the noise-to-data distance in (0, 1]")


def _scales(study: str, name: str, value: Any) -> None:
    """A mapping scale -> reason (why a study or finding has nothing at that scale)."""
    if not isinstance(value, Mapping) or any(s not in SCALES or not isinstance(v, str) for s, v in value.items()):
        raise refuse(study, name, value, f"give a dict {{scale: reason}} with scales from {', '.join(SCALES)}")


@dataclass(frozen=True)
class Metric:
    """What a study measures. `kind`: distance (sw2 on toy data, fd_digits on digits, FID at paper scale),
    tas (task affinity matrix), epochs_to_target (epochs until the control's final distance is reached).
    `nfe` may be one int (`nfe=1`) or a tuple of them."""

    description: str
    sampler: str = "u"  # u: few-step with u; v: Euler with v = u(z, t, t); "" for kind tas
    nfe: tuple[int, ...] = (1,)
    kind: str = "distance"
    lower_is_better: bool = True

    def __post_init__(self) -> None:
        nfe = (self.nfe,) if isinstance(self.nfe, int) else tuple(self.nfe) if isinstance(self.nfe, list) else self.nfe
        object.__setattr__(self, "nfe", nfe)

    def name(self, scale: str) -> str:
        """The eval.jsonl metric name at a scale."""
        if self.kind != "distance":
            return self.kind
        return {"smoke": "sw2", "cpu": "sw2", "digits": "fd_digits"}.get(scale, "fid")

    def check(self, study: str) -> None:
        _text(study, "metric.description", self.description)
        if self.kind not in METRIC_KINDS:
            raise refuse(study, "metric.kind", self.kind, f"choose one of {', '.join(METRIC_KINDS)}")
        if self.sampler not in ("u", "v") and not (self.kind == "tas" and self.sampler == ""):
            raise refuse(study, "metric.sampler", self.sampler, "choose u or v (\"\" only for kind tas)")
        if not isinstance(self.nfe, tuple) or any(isinstance(n, bool) or not isinstance(n, int) or n < 1
                                                  for n in self.nfe) or not (self.nfe or self.kind == "tas"):
            raise refuse(study, "metric.nfe", self.nfe, "give an int >= 1 or a tuple of them")
        if not isinstance(self.lower_is_better, bool):
            raise refuse(study, "metric.lower_is_better", self.lower_is_better, "give True or False")


@dataclass(frozen=True)
class Finding:
    """The paper's claim and which direction of the metric counts as "holds".

    comparison: trend  - the metric moves in `direction` (increasing | decreasing) as tag `tag` grows;
                better - runs with tag value(s) `treatment` beat those with `control` (paired by seed);
                best   - tag value `treatment` gives the best metric of all values of `tag`;
                threshold - the metric as a share of its ceiling (noise-to-data) is below `treatment`.
    Several treatment values are a tuple (a list is read as one)."""

    claim: str
    holds_if: str
    comparison: str
    tag: str
    treatment: Any = None
    control: Any = None
    direction: str = "decreasing"

    def __post_init__(self) -> None:
        if isinstance(self.treatment, list):
            object.__setattr__(self, "treatment", tuple(self.treatment))

    def check(self, study: str) -> None:
        _text(study, "finding.claim", self.claim)
        _text(study, "finding.holds_if", self.holds_if, empty_ok=True)
        if self.comparison not in COMPARISONS:
            raise refuse(study, "finding.comparison", self.comparison, f"choose one of {', '.join(COMPARISONS)}")
        _text(study, "finding.tag", self.tag)
        if self.direction not in DIRECTIONS:
            raise refuse(study, "finding.direction", self.direction, f"choose one of {', '.join(DIRECTIONS)}")
        if self.comparison in ("better", "best") and self.treatment is None:
            raise refuse(study, "finding.treatment", None, f"comparison {self.comparison} needs the treatment's "
                         f"value(s) of tag {self.tag!r}")
        if self.comparison == "better" and self.control is None:
            raise refuse(study, "finding.control", None, f"comparison better needs the control's value of tag "
                         f"{self.tag!r}")
        if self.comparison == "threshold":
            _share(study, "finding.treatment", self.treatment)


@dataclass(frozen=True)
class ExtraFinding:
    """A further claim of the paper read off a study's runs, with its own verdict
    (dynamics.analysis.extras.extra_verdict). kind:
    cross-scale-gap   - params: arms (a, b), scales (s0, s1, ...): the gap metric(a) - metric(b) shrinks from s0
                        to every later scale (reads the stores of those scales together);
    cross-scale-match - params: treatment (scale, arm), control (scale, arm), margin: |treatment - control| is
                        within margin x control;
    non-inferior      - params: treatment {tag: value}, control {tag: value}, margin: treatment's metric is at
                        most control's + margin x the noise-to-data ceiling;
    stability         - the spread (std) of the metric over evaluations after epoch <tag>, and blow-ups (state
                        diverged or a value above the ceiling), fall as the tag grows.
    trend             - params: direction, control (the tag value the claim names), zero ({tag: value}, optional:
                        runs that stand at tag = 0, e.g. a baseline shared with the study's finding): the metric
                        moves in `direction` as the tag grows, tested as a Finding's trend (O1 contamination's
                        normalised reading).
    `tag` names the study tag that holds the arms. `not_applicable`: scale -> why no verdict there."""

    name: str
    claim: str
    holds_if: str
    kind: str
    tag: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    not_applicable: dict[str, str] = field(default_factory=dict)

    def check(self, study: str) -> None:
        _text(study, "extra_findings.name", self.name)
        where = f"extra_findings[{self.name}]"
        _text(study, f"{where}.claim", self.claim)
        _text(study, f"{where}.holds_if", self.holds_if)
        if self.kind not in EXTRA_KINDS:
            raise refuse(study, f"{where}.kind", self.kind, f"choose one of {', '.join(EXTRA_KINDS)}")
        _text(study, f"{where}.tag", self.tag, empty_ok=self.kind == "non-inferior")
        _scales(study, f"{where}.not_applicable", self.not_applicable)
        allowed = EXTRA_PARAMS[self.kind]
        required = [k for k in allowed if k not in OPTIONAL_PARAMS]
        if not isinstance(self.params, Mapping) or set(self.params) - set(allowed) or set(required) - set(self.params):
            raise refuse(study, f"{where}.params", self.params,
                         f"kind {self.kind} takes params {', '.join(allowed) or 'none'}")
        p = self.params
        if "margin" in p and not (_number(p["margin"]) and p["margin"] >= 0):
            raise refuse(study, f"{where}.params['margin']", p["margin"], "give a number >= 0")
        if self.kind == "trend" and p["direction"] not in DIRECTIONS:
            raise refuse(study, f"{where}.params['direction']", p["direction"],
                         f"choose one of {', '.join(DIRECTIONS)}")
        if "zero" in p and not (isinstance(p["zero"], Mapping) and p["zero"]):
            raise refuse(study, f"{where}.params['zero']", p["zero"], "give the zero runs' tags, {tag: value}")
        if self.kind == "cross-scale-gap":
            if not isinstance(p["arms"], (tuple, list)) or len(p["arms"]) != 2:
                raise refuse(study, f"{where}.params['arms']", p["arms"], "give two arms (a, b)")
            scales = p["scales"]
            if not isinstance(scales, (tuple, list)) or len(scales) < 2 or any(s not in SCALES for s in scales):
                raise refuse(study, f"{where}.params['scales']", p["scales"],
                             f"give two or more scales from {', '.join(SCALES)}")
        for side in ("treatment", "control") if "treatment" in allowed else ():
            pair = isinstance(p[side], (tuple, list)) and len(p[side]) == 2
            if self.kind == "cross-scale-match" and not (pair and p[side][0] in SCALES):
                raise refuse(study, f"{where}.params[{side!r}]", p[side], "give (scale, arm)")
            if self.kind == "non-inferior" and not (isinstance(p[side], Mapping) and p[side]):
                raise refuse(study, f"{where}.params[{side!r}]", p[side], "give the arm's tags, {tag: value}")


@dataclass(frozen=True)
class Reference:
    """Runs a study's verdict stands on, and how close to the data they must get for it to count.

    `runs`: tag values that select the reference runs (e.g. {"role": "v-pretrain"}); `bar`: the largest allowed
    share of the noise-to-data distance, value / ceiling, of their final `sampler`/`nfe` evaluation (mean over
    seeds, per grid point; a blown-up or diverged run counts as the ceiling). A study whose reference misses
    its bar is reported as "not in the learning regime" (docs/design.md)."""

    runs: dict[str, Any]
    bar: float
    sampler: str = "u"  # u: few-step with u; v: Euler with v = u(z, t, t)
    nfe: int = 1
    label: str = ""  # how the report names the runs; default: their tags

    @property
    def name(self) -> str:
        return self.label or ",".join(f"{k}={v}" for k, v in self.runs.items())

    def describe(self) -> str:
        what = f"{self.nfe}-NFE {'v' if self.sampler == 'v' else 'u'}"
        return f"{self.name}: {what} <= {self.bar:.0%} of noise-to-data"

    def check(self, study: str) -> None:
        if not isinstance(self.runs, Mapping) or not self.runs or not all(isinstance(k, str) for k in self.runs):
            raise refuse(study, "reference.runs", self.runs, "name the runs' tags, e.g. {'method': 'vanilla'}")
        _share(study, f"reference[{self.name}].bar", self.bar)
        if self.sampler not in ("u", "v"):
            raise refuse(study, f"reference[{self.name}].sampler", self.sampler, "choose u or v")
        if isinstance(self.nfe, bool) or not isinstance(self.nfe, int) or self.nfe < 1:
            raise refuse(study, f"reference[{self.name}].nfe", self.nfe, "give an int >= 1")
        _text(study, f"reference[{self.name}].label", self.label, empty_ok=True)

    def selects(self, tags: Mapping[str, Any]) -> bool:
        """Whether a run with these tags is a reference run (numbers compared as numbers: 20 matches 20.0)."""
        for key, want in self.runs.items():
            if key not in tags:
                return False
            have = tags[key]
            if _number(want) and _number(have):
                if abs(float(have) - float(want)) > 1e-9:
                    return False
            elif str(have) != str(want):
                return False
        return True
