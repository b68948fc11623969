"""What `--seeds auto` costs and how often it is wrong, simulated exactly as the flow decides, beside retesting.

    python benchmarks/sequential_error.py [--runs 20000] [--seed 0]

Each simulated run compares three rates with the baseline on test accuracy and on the gap (six claims),
in waves of 5 seeds up to 20, as the flow does: after each wave every claim of a rate still training is
decided on the running intersection of its repeated intervals (dropout_lab/analysis/sequential.py), and a
rate whose two claims are decided trains no more seeds (its claims keep the decision they had; the
baseline trains on while any rate does). Trainings counts the models a run trains. The per-seed paired
differences are drawn with the spreads and correlations measured in docs/answer (the full `--seeds auto`
run on the stand-in: every claim's SD over its seeds, the correlations over the seeds all rates share)
and the scenario's true means:

- no difference: every true difference 0 (superiority errors possible, equivalence right at once);
- at the margin: test accuracy exactly ±1 point (equivalence's hardest case), gaps as observed;
- observed: the run's own mean differences;
- worst case: six independent claims, every true difference 0 and a margin no interval can fit inside,
  so every claim runs to the last look unless it is (falsely) decided: the family-wise bound's own case;
- t3, uniform, symmetrized, resampled, exponential: the worst case with other shapes, all scaled to the
  measured SDs: heavy tails (Student's t on 3 degrees of freedom), light tails (uniform), the observed
  per-seed differences' magnitudes with random signs (the real shape under a null of exchangeable arms),
  the observed differences themselves, centred and drawn with replacement (not symmetric), and a skewed
  shape (a centred exponential).

The flow's procedure (since 2026-12-07) is a group-sequential sign-flip procedure, exact whenever the
differences are symmetric about the tested value, whatever their shape (dropout_lab/analysis/signflip.py):
each side of each claim spends a*(n/20)^2 of a = 0.0083/2, its boundaries computed from the sign-flip
law of the magnitudes seen so far. Before it, the flow used Student's t on the repeated intervals of an
O'Brien-Fleming-type design, the level spent calibrated by simulation for normal differences; this file
keeps that procedure (its boundaries by numerical integration, its calibration) to print it beside.

A claim is false when the truth contradicts it: better/worse with a true difference of zero or of the
other sign, equivalent when the true difference is at least the margin. Printed per scenario, on the same
draws: the procedure as the flow runs it (sign-flip), the one it ran before (Student's t, calibrated), and
naive retesting done the flow's way (a plain 95 % t-interval per claim after every wave, rates stopping
when decided). Per procedure: the expected trainings, the chance that every claim is decided, the
per-claim error (the mean over the six claims of how often each is false) against its nominal
0.05/6 = 0.0083, and the family-wise error (a run with any false claim) against 0.05, each with its
simulation's standard error. The sign-flip procedure takes about 2 minutes per scenario at 20,000 runs.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from scipy import optimize
from scipy import stats as st

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dropout_lab.analysis.sequential import planned_ends  # noqa: E402
from dropout_lab.analysis.signflip import first_rejection, spending  # noqa: E402
from dropout_lab.analysis.stats import ALPHA  # noqa: E402

ANSWER = REPO / "docs" / "answer" / "summary.parquet"
RATES = ("dropout=0.1", "dropout=0.25", "dropout=0.5")
METRICS = ("final_test_acc", "generalization_gap")
HIGHER_IS_BETTER = (True, False)
MARGIN = 1.0  # points
MAX_SEEDS = 20
CLAIMS = len(RATES) * len(METRICS)


# --- the procedure before 2026-12-07: Student's t on O'Brien-Fleming-type repeated intervals ---------------

T_GRID = 401  # points of the numerical integration across the continuation region (boundaries to ~5e-6)


def spent(tau: float, alpha: float) -> float:
    """Alpha spent by information fraction tau (O'Brien–Fleming-type Lan–DeMets function)."""
    if tau <= 0:
        return 0.0
    if tau >= 1:
        return alpha
    return float(2 * st.norm.sf(st.norm.isf(alpha / 2) / math.sqrt(tau)))  # sf: no underflow to 0 for tiny alpha


def boundaries(fractions: Sequence[float], alpha: float) -> list[float]:
    """Two-sided boundaries c_k on |Z_k| at increasing information fractions (0, 1], such that under
    no difference the probability of first crossing at look k is spent(tau_k) - spent(tau_{k-1})."""
    return list(_boundaries(tuple(min(1.0, float(t)) for t in fractions), float(alpha)))


def _boundaries(taus: tuple[float, ...], alpha: float) -> tuple[float, ...]:
    if any(b <= a for a, b in zip(taus, taus[1:], strict=False)) or not taus or taus[0] <= 0:
        raise ValueError(f"information fractions must increase within (0, 1]: {list(taus)}")
    # Work on the score scale S = Z·√tau (Brownian motion): b_k = c_k·√tau_k.
    first = spent(taus[0], alpha)
    b = st.norm.isf(first / 2) * math.sqrt(taus[0])
    bounds = [b / math.sqrt(taus[0])]
    x = np.linspace(-b, b, T_GRID)
    density = st.norm.pdf(x, scale=math.sqrt(taus[0]))  # sub-density of S_1 on the continuation region
    used = first
    for prev, tau in zip(taus, taus[1:], strict=False):
        target = spent(tau, alpha) - used
        sd = math.sqrt(tau - prev)
        weights = density * _trapezoid_weights(x)

        def exit_mass(bound: float, x=x, weights=weights, sd=sd) -> float:
            return float(weights @ (st.norm.sf((bound - x) / sd) + st.norm.cdf((-bound - x) / sd)))

        if target <= 0:
            bk = math.inf
        else:
            high = float(np.abs(x).max()) + 40 * sd
            bk = optimize.brentq(lambda v, target=target: exit_mass(v) - target, 0.0, high, xtol=1e-10)
        bounds.append(bk / math.sqrt(tau))
        used += target
        if math.isinf(bk):
            continue
        y = np.linspace(-bk, bk, T_GRID)
        z = (y[:, None] - x[None, :]) / sd  # the normal kernel in numpy: scipy's pdf costs 10x on 801 x 801
        density = (np.exp(-0.5 * z * z) / (sd * math.sqrt(2 * math.pi))) @ weights
        x = y
    return tuple(bounds)


def _trapezoid_weights(x: np.ndarray) -> np.ndarray:
    w = np.full(len(x), x[1] - x[0])
    w[0] = w[-1] = (x[1] - x[0]) / 2
    return w


CALIBRATION_RUNS = 1_000_000  # normal runs per calibration: the simulated error's SE is ~0.00009 at 0.0083
CALIBRATION_SEED = 20261203  # fixed: the same design always gets the same boundaries
CALIBRATION_SE = 2  # the simulated error plus this many of its standard errors must stay within the level
_CHUNK = 100_000  # runs simulated at once (memory: chunk x max_seeds doubles)


def miss_rate(ends: tuple[int, ...], max_seeds: int, spent: float, t_at: np.ndarray) -> float:
    """Fraction of the simulated runs whose t-interval at some look misses the true difference (0)."""
    cs = boundaries([n / max_seeds for n in ends], spent)
    crit = np.array([st.t.isf(float(st.norm.sf(c)), n - 1) for n, c in zip(ends, cs, strict=True)])
    return float(np.mean((t_at > crit).any(axis=1)))


def null_t(ends: tuple[int, ...], runs: int, seed: int) -> np.ndarray:
    """|mean| / (sd / sqrt(n)) at each look (runs, looks) of `runs` normal runs with a true difference of 0."""
    rng, n, at = np.random.default_rng(seed), np.array(ends, dtype=float), np.array(ends) - 1
    out = []
    for size in [_CHUNK] * (runs // _CHUNK) + [runs % _CHUNK] * bool(runs % _CHUNK):
        x = rng.standard_normal((size, ends[-1]))
        mean = np.cumsum(x, axis=1)[:, at] / n
        sd = np.sqrt(np.maximum(np.cumsum(x * x, axis=1)[:, at] - n * mean * mean, 0) / (n - 1))
        out.append(np.abs(mean) / (sd / np.sqrt(n)))
    return np.concatenate(out)


def calibrated_spending(max_seeds: int, alpha: float) -> float:
    """The level α' to spend (O'Brien–Fleming type over the planned looks of `max_seeds`) so that the
    repeated t-intervals miss a true difference at some look in at most `alpha` of normal runs (the
    worst case of a claim's error: a true difference of zero), the simulation's own error included: its
    miss rate plus CALIBRATION_SE standard errors. One look (seeds fixed in advance): the t-interval is
    exact, α' = α. Simulated once per design (seeds, claims) and process, with a fixed seed (~1 s)."""
    ends = planned_ends(max_seeds)
    if len(ends) < 2:
        return alpha
    t_at = null_t(ends, CALIBRATION_RUNS, CALIBRATION_SEED)
    allowed = alpha - CALIBRATION_SE * math.sqrt(alpha * (1 - alpha) / CALIBRATION_RUNS)
    low, high = alpha / 4, alpha  # miss rate grows with the level spent: bisect on the log scale
    while high / low > 1.001:
        mid = math.sqrt(low * high)
        low, high = (mid, high) if miss_rate(ends, max_seeds, mid, t_at) <= allowed else (low, mid)
    return low


# --- the scenarios ------------------------------------------------------------------------------------


def measured() -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    """(means (6,), SDs (6,), correlation (6, 6)) of the per-seed paired differences in docs/answer, in
    points, claims ordered rate-major (test accuracy, gap); and the centred differences for resampling."""
    rows = pq.read_table(ANSWER).to_pylist()
    by = {}
    for r in rows:
        by.setdefault(r["model"], {})[r["seed"]] = r
    diffs = []
    for rate in RATES:
        for metric in METRICS:
            diffs.append({s: 100 * (by[rate][s][metric] - by["baseline"][s][metric]) for s in by[rate]})
    means = np.array([np.mean(list(d.values())) for d in diffs])
    sds = np.array([np.std(list(d.values()), ddof=1) for d in diffs])
    common = sorted(set.intersection(*(set(d) for d in diffs)))
    corr = np.corrcoef(np.array([[d[s] for s in common] for d in diffs]))
    centred = [np.array(list(d.values())) - np.mean(list(d.values())) for d in diffs]
    return means, sds, corr, centred


def draw(kind: str, means: np.ndarray, sds: np.ndarray, corr: np.ndarray, centred, runs: int,
         rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    """Per-seed differences (runs, claims, MAX_SEEDS), points."""
    shape = (runs, CLAIMS, MAX_SEEDS)
    if kind == "resampled":
        return means[None, :, None] + np.stack(
            [rng.choice(c, size=(runs, MAX_SEEDS)) * sd / c.std(ddof=1) for c, sd in zip(centred, sds, strict=True)],
            axis=1,
        )
    if kind == "symmetrized":  # unit mean square
        z = np.stack([rng.choice(np.abs(c), size=(runs, MAX_SEEDS)) / np.sqrt(np.mean(c**2)) for c in centred], axis=1)
        return means[None, :, None] + sds[None, :, None] * z * rng.choice([-1.0, 1.0], size=shape)
    chol = np.linalg.cholesky(corr)
    z = np.einsum("ij,rjs->ris", chol, rng.standard_normal(shape))
    if kind == "t3":  # heavy tails, unit variance: t3 / sqrt(3)
        z = rng.standard_t(3, size=shape) / math.sqrt(3)
    elif kind == "uniform":  # light tails, unit variance
        z = rng.uniform(-math.sqrt(3), math.sqrt(3), size=shape)
    elif kind == "exponential":  # skewed, unit variance, mean 0
        z = rng.exponential(1.0, size=shape) - 1.0
    return means[None, :, None] + sds[None, :, None] * z


def critical(ends: tuple[int, ...], spent: float | None) -> np.ndarray:
    """Half-width multipliers (t quantiles) per look: the repeated intervals' (spent level), or a plain 95%."""
    if spent is None:
        return np.array([st.t.isf(ALPHA / 2, n - 1) for n in ends])
    cs = boundaries([n / MAX_SEEDS for n in ends], spent)
    return np.array([st.t.isf(float(st.norm.sf(c)), n - 1) for n, c in zip(ends, cs, strict=True)])


def run_flow(diffs: np.ndarray, crit: np.ndarray, ends: tuple[int, ...], margin: float, running: bool) -> dict:
    """Decide as the flow does, all runs at once: (decisions (runs, claims) as 0 undecided, 1 better,
    -1 worse, 2 equivalent; trainings (runs,); decided at the first look (runs,))."""
    runs = diffs.shape[0]
    low = np.full((runs, CLAIMS), -np.inf)
    high = np.full((runs, CLAIMS), np.inf)
    decided = np.zeros((runs, CLAIMS), dtype=int)
    training = np.ones((runs, len(RATES)), dtype=bool)
    trainings = np.zeros(runs)
    sign = np.tile(np.where(HIGHER_IS_BETTER, 1, -1), len(RATES))
    at_first = None
    prev = 0
    for k, n in enumerate(ends):
        # this wave's seeds: the baseline while any rate trains, each rate while it trains
        trainings += (n - prev) * (training.any(axis=1) + training.sum(axis=1))
        prev = n
        part = diffs[:, :, :n]
        mean, sd = part.mean(axis=2), part.std(axis=2, ddof=1)
        half = crit[k] * sd / math.sqrt(n)
        open_ = np.repeat(training, len(METRICS), axis=1)
        if running:  # the running intersection (the repeated intervals)
            new_low, new_high = np.maximum(low, mean - half), np.minimum(high, mean + half)
        else:  # naive: this wave's interval alone
            new_low, new_high = mean - half, mean + half
        low, high = np.where(open_, new_low, low), np.where(open_, new_high, high)
        call = np.where((low > -margin) & (high < margin), 2, np.where(low > 0, sign, np.where(high < 0, -sign, 0)))
        decided = np.where(open_, call, decided)
        training &= ~(decided.reshape(runs, len(RATES), len(METRICS)) != 0).all(axis=2)
        if k == 0:
            at_first = (decided != 0).all(axis=1)
        if not training.any():
            break
    return {"decided": decided, "trainings": trainings, "at_first": at_first}


def run_signflip(diffs: np.ndarray, ends: tuple[int, ...], margin: float) -> dict:
    """run_flow's decisions and trainings with the flow's sign-flip tests (runs one at a time: slow)."""
    runs = diffs.shape[0]
    spend = spending(ends, ends[-1], ALPHA / CLAIMS)
    sign = np.tile(np.where(HIGHER_IS_BETTER, 1, -1), len(RATES))
    decided = np.zeros((runs, CLAIMS), dtype=int)
    trainings, at_first = np.zeros(runs), np.zeros(runs, dtype=bool)
    never = len(ends)
    for r in range(runs):
        first = []  # per claim: (look, decision), look len(ends) when never decided
        for c in range(CLAIMS):
            d = diffs[r, c]
            looks = {
                sign[c]: first_rejection(d, ends, spend),
                -sign[c]: first_rejection(-d, ends, spend),
                2: max(first_rejection(d + margin, ends, spend), first_rejection(margin - d, ends, spend)),
            }
            reached = [(k, v) for v, k in looks.items() if k < never]
            first.append(min(reached, key=lambda kv: (kv[0], kv[1] != 2)) if reached else (never, 0))
        stops = [max(first[2 * rate][0], first[2 * rate + 1][0]) for rate in range(len(RATES))]
        seeds = [ends[min(k, never - 1)] for k in stops]
        trainings[r] = sum(seeds) + max(seeds)  # each rate's models, and the baseline's while any rate trains
        decided[r] = [v for _, v in first]
        at_first[r] = all(k == 0 for k, _ in first)
    return {"decided": decided, "trainings": trainings, "at_first": at_first}


def false_claims(decided: np.ndarray, truth: np.ndarray, margin: float) -> np.ndarray:
    """(runs, claims) booleans: the claim contradicts the truth (1/-1 say a difference's direction in
    better/worse terms; 2 says within the margin)."""
    sign = np.tile(np.where(HIGHER_IS_BETTER, 1, -1), len(RATES))
    direction = np.sign(truth) * sign  # +1: the truth is 'better'
    wrong_sign = (np.abs(decided) == 1) & ((truth[None, :] == 0) | (decided != direction[None, :]))
    wrong_equivalence = (decided == 2) & (np.abs(truth)[None, :] >= margin)
    return wrong_sign | wrong_equivalence


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20_000, help="simulated runs per scenario")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    means, sds, corr, centred = measured()
    ends = planned_ends(MAX_SEEDS)
    per_claim = ALPHA / CLAIMS
    spent = calibrated_spending(MAX_SEEDS, per_claim)
    procedures = {"ours: sign-flip": (None, None),
                  "before: Student's t, calibrated": (critical(ends, spent), True),
                  "naive: 95% CI after each wave": (critical(ends, None), False)}  # fmt: skip
    at_margin = np.array([MARGIN * (1 if m > 0 else -1) if i % 2 == 0 else m for i, m in enumerate(means)])
    scenarios = {
        "no difference": ("normal", np.zeros(CLAIMS), corr, MARGIN),
        "at the margin": ("normal", at_margin, corr, MARGIN),
        "observed": ("normal", means, corr, MARGIN),
        "worst case": ("normal", np.zeros(CLAIMS), np.eye(CLAIMS), 1e-9),
        **{
            f"worst case, {kind}": (kind, np.zeros(CLAIMS), np.eye(CLAIMS), 1e-9)
            for kind in ("t3", "uniform", "symmetrized", "resampled", "exponential")
        },
    }
    print(f"measured in docs/answer (points): means {np.round(means, 2).tolist()}, SDs {np.round(sds, 2).tolist()}")
    print(f"{args.runs} runs per scenario, waves of 5 to {MAX_SEEDS} seeds, 6 claims; per-claim level "
          f"{per_claim:.5f} (before: {spent:.5f} spent, calibrated)\n")  # fmt: skip
    print("| scenario | procedure | trainings | all decided | decided at 5 | per-claim error | family-wise error |")
    print("|---|---|---|---|---|---|---|")
    for name, (kind, truth, correlation, margin) in scenarios.items():
        diffs = draw(kind, truth, sds, correlation, centred, args.runs, np.random.default_rng(args.seed))
        for label, (crit, running) in procedures.items():
            if running is None:
                out = run_signflip(diffs, ends, margin)
            else:
                out = run_flow(diffs, crit, ends, margin, running)
            wrong = false_claims(out["decided"], truth, margin)
            error = f"{wrong.mean():.5f} ± {math.sqrt(wrong.mean() * (1 - wrong.mean()) / wrong.size):.5f}"
            family, n = wrong.any(axis=1).mean(), len(wrong)
            trainings = f"{out['trainings'].mean():.1f} ± {out['trainings'].std() / math.sqrt(n):.1f}"
            family_text = f"{family:.4f} ± {math.sqrt(family * (1 - family) / n):.4f}"
            print(f"| {name} | {label} | {trainings} | {(out['decided'] != 0).all(axis=1).mean():.3f}"
                  f" | {out['at_first'].mean():.3f} | {error} | {family_text} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
