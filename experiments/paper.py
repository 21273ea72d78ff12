"""The paper's side of each study: the method it compares with vanilla, and its effect sizes.

PAPER_METHOD names the method each study compares with vanilla, as the paper ran it, the same at every scale
so a grid reads the same everywhere.

PAPER_EFFECTS holds what the statistical power of each study is compared to: the paper's own numbers for the
comparison the study's verdict tests, as a relative change (treatment / control - 1, e.g. B/4 1-NFE FID
11.58 -> 9.87 is -14.8%). The analysis applies that relative change to the control's measured value at the
study's scale ("the effect the paper implies here"), and sets it beside the smallest effect the study's seeds
can detect (dynamics.analysis.power). Where a comparison has several arms, the entry is the smallest paper
effect the verdict needs (the hardest to detect). A study whose finding the paper shows without numbers
(O1-O3 are figures) has `relative=None`; the report says so.

Users add their own study's entry to PAPER_EFFECTS under its name.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import RegistryError

# - k-schedule: the paper's k = 1 value (10.20 at B/4) is its DTD + L_u row;
# - v-quality: the paper's only v-quality comparison is B/4's MeanFlow 7.61 against "ours w MinSNR" 7.09;
# - convergence (2.1x M/2, 2.3x L/2, 2.5x XL/2) and CFG robustness: DTD + L_u, its primary method at M/2 and up.
PAPER_METHOD: dict[str, str] = {
    "k-schedule": "dtd-lu", "v-quality": "minsnr-lu", "convergence": "dtd-lu", "cfg-robustness": "dtd-lu",
}


def paper_method(study: str) -> str:
    """The method `study` compares with vanilla (PAPER_METHOD)."""
    if study not in PAPER_METHOD:
        raise RegistryError(f"study {study!r} has no paper method; known: {', '.join(PAPER_METHOD)}")
    return PAPER_METHOD[study]


@dataclass(frozen=True)
class PaperEffect:
    """A paper number pair. `ratio=True`: the effect is scale-free (a speed-up), taken as is, not scaled."""

    source: str  # where the numbers are: table, model, metric
    control: float | None = None
    treatment: float | None = None
    ratio: bool = False

    @property
    def relative(self) -> float | None:
        """treatment / control - 1 (for a ratio: treatment / control, e.g. a speed-up of 2.1 over 1.0, minus 1)."""
        if self.control is None or self.treatment is None:
            return None
        return self.treatment / self.control - 1.0

    def describe(self) -> str:
        if self.relative is None:
            return f"no number in the paper ({self.source})"
        return f"{self.control:g} -> {self.treatment:g} ({self.relative:+.1%}; {self.source})"


NO_NUMBERS = "the paper shows it in a figure without numbers"

PAPER_EFFECTS: dict[str, PaperEffect] = {
    "o1-v-first": PaperEffect(NO_NUMBERS),
    "o1-fixed-budget": PaperEffect(NO_NUMBERS),
    "o1-contaminated-v": PaperEffect("'even k = 0.03 degrades u severely'; " + NO_NUMBERS),
    "o2-interval-bins": PaperEffect(NO_NUMBERS),
    "o3-task-affinity": PaperEffect("TAS matrices; " + NO_NUMBERS),
    # every component must beat vanilla: the smallest gain is +L_u alone (the full method is 11.58 -> 9.87, -14.8%)
    "main": PaperEffect("B/4 1-NFE FID, vanilla -> +L_u alone (the smallest component gain)", 11.58, 10.98),
    # k = 1 against the runner-up k = 0.5
    "k-schedule": PaperEffect("B/4 1-NFE FID, runner-up k = 0.5 -> k = 1 (DTD + L_u)", 11.16, 10.20),
    "v-quality": PaperEffect("B/4 32-NFE FID of v = u(z,t,t), MeanFlow -> ours w MinSNR", 7.61, 7.09),
    # the smallest of the three speed-ups (M/2 2.1x, L/2 2.3x, XL/2 2.5x); effect = speed-up - 1
    "convergence": PaperEffect("speed-up to vanilla's 240-epoch FID, M/2 (the smallest of 2.1/2.3/2.5x)", 1.0, 2.1,
                               ratio=True),
    # per-(w, kappa) numbers are not given; the improvement at the paper's own L/2 setting
    "cfg-robustness": PaperEffect("L/2 1-NFE FID at the paper's CFG setting, MeanFlow -> ours w DTD", 3.84, 3.47),
    "calibration": PaperEffect("not a paper finding: the toolkit's own sanity check"),
}


def paper_effect(study: str) -> PaperEffect | None:
    """The paper's numbers for `study`'s comparison, or None for a study without an entry."""
    return PAPER_EFFECTS.get(study)
