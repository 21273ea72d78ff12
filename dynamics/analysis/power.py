"""Statistical power: the smallest effect a study's seeds can detect, and the effect the paper implies.

Every verdict is a t-test on per-seed quantities (paired differences by seed, per-seed slopes, speed-ups), so
its detectable effect follows from the test's standard error and degrees of freedom: the smallest true effect
d > 0 that a two-sided level-alpha t-test rejects with probability `power`. The exact power of the t-test is a
noncentral-t tail: with ncp = d / se,

    power(d) = P(T' > t_{1-alpha/2, df}) + P(T' < -t_{1-alpha/2, df}),    T' ~ noncentral t(df, ncp),

solved for d. No normal approximation: with 3 seeds (df = 2) the normal formula (z_.975 + z_.8) se = 2.80 se
would claim twice the power the seeds have; the exact value is 5.65 se (3.26 sd of the paired differences).
Paired comparisons (same seed, same init and data stream in both arms): se = sd(differences) / sqrt(n),
df = n - 1. Two independent samples: pooled sd, se = sd sqrt(1/n1 + 1/n2), df = n1 + n2 - 2.
"""

from __future__ import annotations

import math

from scipy import optimize, stats

ALPHA = 0.05
POWER = 0.80


def t_quantile(df: int, q: float = 0.975) -> float:
    """Student-t quantile (the 95% two-sided critical value by default)."""
    return float(stats.t.ppf(q, df))


def t_power(effect: float, se: float, df: int, alpha: float = ALPHA) -> float:
    """Probability that a two-sided level-alpha t-test (df degrees of freedom) rejects when the true effect is
    `effect` and the estimate's standard error is `se`."""
    crit = t_quantile(df, 1 - alpha / 2)
    ncp = effect / se
    lower = stats.nct.sf(crit, df, -ncp)  # P(T' < -crit) by symmetry (nct.cdf far in the tail can return nan)
    return float(stats.nct.sf(crit, df, ncp) + (lower if math.isfinite(lower) else 0.0))


def detectable_effect(se: float, df: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest effect > 0 that the test detects with probability `power` (nan without a spread)."""
    if not (math.isfinite(se) and se > 0 and df >= 1):
        return math.nan
    # power grows with the effect; the normal approximation's answer is a lower bound to bracket from
    low = 1e-9 * se
    high = (stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)) * se
    while t_power(high, se, df, alpha) < power:
        high *= 2
    return float(optimize.brentq(lambda d: t_power(d, se, df, alpha) - power, low, high, xtol=1e-10 * se))


def paired_detectable(sd_diff: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """Detectable mean difference of a paired (or one-sample) t-test over n pairs with difference spread sd_diff."""
    if n < 2:
        return math.nan
    return detectable_effect(sd_diff / math.sqrt(n), n - 1, alpha, power)


def two_sample_detectable(sd: float, n1: int, n2: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """Detectable difference of means of a two-sample (pooled, equal-variance) t-test."""
    if n1 < 1 or n2 < 1 or n1 + n2 < 3:
        return math.nan
    return detectable_effect(sd * math.sqrt(1 / n1 + 1 / n2), n1 + n2 - 2, alpha, power)


def detectable_from_interval(mean: float, ci_high: float, n: int, alpha: float = ALPHA,
                             power: float = POWER, df: int = -1) -> float:
    """The detectable effect of the test behind a 95% t-interval (mean, high) over n per-seed values: the
    interval's half-width is t_{.975, df} se (df = n - 1 unless given, e.g. a seed-blocked regression's), so
    the interval carries the spread the power needs."""
    df = n - 1 if df < 0 else df
    if df < 1 or not (math.isfinite(mean) and math.isfinite(ci_high)):
        return math.nan
    se = (ci_high - mean) / t_quantile(df)
    return detectable_effect(se, df, alpha, power)


def seeds_needed(effect: float, sd: float, paired: bool = True, alpha: float = ALPHA, power: float = POWER,
                 max_seeds: int = 200) -> int | None:
    """The fewest seeds (pairs, or per arm for two samples) that detect `effect` at spread `sd`; None if more
    than max_seeds would be needed."""
    effect = abs(effect)
    for n in range(2, max_seeds + 1):
        d = paired_detectable(sd, n, alpha, power) if paired else two_sample_detectable(sd, n, n, alpha, power)
        if d <= effect:
            return n
    return None


def implied_effect(relative: float | None, control_value: float, lower_is_better: bool = True,
                   ratio: bool = False) -> float:
    """The paper's relative change applied to the control's measured value, oriented as the verdicts are
    (> 0 supports the finding). A ratio effect (a speed-up) is scale-free: its relative change is the effect."""
    if relative is None:
        return math.nan
    if ratio:
        return float(relative)
    if not math.isfinite(control_value):
        return math.nan
    change = relative * control_value
    return float(-change if lower_is_better else change)

