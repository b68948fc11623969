"""What `--seeds auto` costs and how often it is wrong, simulated exactly as the flow decides, beside retesting.

    python benchmarks/sequential_error.py [--runs 20000] [--seed 0] [--signflip RHO]
    python benchmarks/sequential_error.py --designs [--runs 1000000] [--seed 7]

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

`--signflip RHO` adds a candidate for an error that holds without the normal model (about 2 minutes per scenario
at 20,000 runs): a group-sequential sign-flip procedure, exact whenever the differences are symmetric
about the tested value, whatever their shape. Each claim's decisions come from four one-sided sequential
tests (upper and lower at 0, upper at minus the margin, lower at plus the margin), each spending
a*(n/20)^RHO of a = 0.0083/2. At each look the boundary is computed from the sign-flip law of the
magnitudes seen so far (a recursion over the running sum on a grid, the magnitudes rounded to 1/200 of
the largest; earlier looks' boundaries absorb), so the chance of a false rejection by that look, given
those magnitudes, is at most what has been spent; the earlier looks' share of it does not change with
later magnitudes, so the total holds unconditionally. A claim keeps the first decision it reaches.

`--designs`: the worst case's per-claim error (normal differences, a true difference of zero), with its
standard error, for every design a user can ask for (--max-seeds 10 to 30; 2, 4 or 6 claims) at the level
spent (calibrated on other draws) and at the nominal level: tests/test_sequential.py holds it.

A claim is false when the truth contradicts it: better/worse with a true difference of zero or of the
other sign, equivalent when the true difference is at least the margin. Printed per scenario, on the same
draws: the procedure as the flow runs it (repeated intervals, the level spent calibrated by simulation),
the same without the calibration (Student's t at the boundaries' nominal levels: before 2026-12-03), and
naive retesting done the flow's way (a plain 95 % t-interval per claim after every wave, rates stopping
when decided). Per procedure: the expected trainings, the chance that every claim is decided, the
per-claim error (the mean over the six claims of how often each is false) against its nominal
0.05/6 = 0.0083, and the family-wise error (a run with any false claim) against 0.05. The first look
(5 of 20 seeds) spends about 1e-5 of each claim's 0.0083: the column `decided at 5` shows how rarely
it can decide at this problem's spreads.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from scipy import stats as st

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dropout_lab.analysis.sequential import boundaries, calibrated_spending, miss_rate, null_t, planned_ends  # noqa: E402
from dropout_lab.analysis.stats import ALPHA  # noqa: E402

ANSWER = REPO / "docs" / "answer" / "summary.parquet"
RATES = ("dropout=0.1", "dropout=0.25", "dropout=0.5")
METRICS = ("final_test_acc", "generalization_gap")
HIGHER_IS_BETTER = (True, False)
MARGIN = 1.0  # points
MAX_SEEDS = 20
CLAIMS = len(RATES) * len(METRICS)


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


GRID = 200  # the sign-flip recursion's grid: magnitudes in 1/200ths of the largest


def signflip_look(x: np.ndarray, ends: tuple[int, ...], spend: list[float]) -> int:
    """The look (0-based) at which the one-sided sequential sign-flip test of 'x is centred at or below 0'
    rejects, or -1; spend[k] is the level spent by look k."""
    top = np.abs(x).max()
    if top == 0:
        return -1
    m = np.rint(np.abs(x) / top * GRID).astype(np.int64)  # (n,) rounded magnitudes, grid units
    observed = np.cumsum(np.sign(x) * m)
    size = int(m[: ends[-1]].sum())
    law = np.zeros(2 * size + 1)  # the running sum's law under random signs, not yet rejected; index = sum + size
    law[size] = 1.0
    spent, done = 0.0, 0
    for k, n in enumerate(ends):
        for step in m[done:n]:
            if step:  # half the chance moves up by the magnitude, half down
                pad = np.zeros(step)
                law = 0.5 * (np.concatenate([pad, law[:-step]]) + np.concatenate([law[step:], pad]))
        done = n
        tail = np.cumsum(law[::-1])[::-1]  # tail[i]: the chance of a sum >= i - size
        within = np.nonzero(tail <= spend[k] - spent + 1e-15)[0]  # boundaries that spend no more than is left
        bound = int(within[0]) if len(within) else len(law)
        if bound < len(law):
            spent += tail[bound]
            if observed[n - 1] + size >= bound:
                return k
            law[bound:] = 0.0
    return -1


def run_signflip(diffs: np.ndarray, ends: tuple[int, ...], margin: float, rho: float) -> dict:
    """run_flow's decisions and trainings with the sign-flip tests (runs one at a time: slow)."""
    runs = diffs.shape[0]
    spend = [ALPHA / CLAIMS / 2 * (n / ends[-1]) ** rho for n in ends]
    sign = np.tile(np.where(HIGHER_IS_BETTER, 1, -1), len(RATES))
    decided = np.zeros((runs, CLAIMS), dtype=int)
    trainings, at_first = np.zeros(runs), np.zeros(runs, dtype=bool)
    for r in range(runs):
        first = []  # per claim: (look, decision), look len(ends) when never decided
        for c in range(CLAIMS):
            d = diffs[r, c]
            looks = {sign[c]: signflip_look(d, ends, spend), -sign[c]: signflip_look(-d, ends, spend)}
            above, below = signflip_look(d + margin, ends, spend), signflip_look(margin - d, ends, spend)
            looks[2] = max(above, below) if min(above, below) >= 0 else -1
            reached = [(k, v) for v, k in looks.items() if k >= 0]
            first.append(min(reached, key=lambda kv: (kv[0], kv[1] != 2)) if reached else (len(ends), 0))
        stops = [max(first[2 * rate][0], first[2 * rate + 1][0]) for rate in range(len(RATES))]
        seeds = [ends[min(k, len(ends) - 1)] for k in stops]
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


def designs(runs: int, seed: int) -> None:
    print(f"{runs} normal runs per design, a true difference of 0 (the worst case of one claim)\n")
    print("| max seeds | claims | nominal | spent | error at the spent level | at the nominal level |")
    print("|---|---|---|---|---|---|")
    for max_seeds in (10, 15, 20, 30):
        ends = planned_ends(max_seeds)
        t_at = null_t(ends, runs, seed)
        for claims in (2, 4, 6):
            alpha = ALPHA / claims
            spent = calibrated_spending(max_seeds, alpha)
            rates = [miss_rate(ends, max_seeds, level, t_at) for level in (spent, alpha)]
            shown = [f"{r:.5f} ± {math.sqrt(r * (1 - r) / runs):.5f}" for r in rates]
            print(f"| {max_seeds} | {claims} | {alpha:.5f} | {spent:.5f} | {shown[0]} | {shown[1]} |", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=None, help="20,000 (scenarios); 1,000,000 (--designs)")
    ap.add_argument("--seed", type=int, default=None, help="0 (scenarios); 7 (--designs)")
    ap.add_argument("--designs", action="store_true", help="the worst case's error for every design")
    ap.add_argument(
        "--signflip",
        type=float,
        default=None,
        metavar="RHO",
        help="add the sign-flip procedure, spending a*t^RHO (slow)",
    )
    args = ap.parse_args()
    if args.designs:
        designs(args.runs or 1_000_000, 7 if args.seed is None else args.seed)
        return 0
    args.runs, args.seed = args.runs or 20_000, args.seed or 0
    means, sds, corr, centred = measured()
    ends = planned_ends(MAX_SEEDS)
    per_claim = ALPHA / CLAIMS
    spent = calibrated_spending(MAX_SEEDS, per_claim)
    procedures = {"ours (calibrated)": (critical(ends, spent), True),
                  "ours, uncalibrated (before)": (critical(ends, per_claim), True),
                  "naive: 95% CI after each wave": (critical(ends, None), False)}  # fmt: skip
    if args.signflip is not None:
        procedures[f"sign-flip, spending a*t^{args.signflip:g}"] = (args.signflip, None)
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
          f"{per_claim:.5f}, spent {spent:.5f} (calibrated)\n")  # fmt: skip
    print("| scenario | procedure | trainings | all decided | decided at 5 | per-claim error | family-wise error |")
    print("|---|---|---|---|---|---|---|")
    for name, (kind, truth, correlation, margin) in scenarios.items():
        diffs = draw(kind, truth, sds, correlation, centred, args.runs, np.random.default_rng(args.seed))
        for label, (crit, running) in procedures.items():
            if running is None:
                out = run_signflip(diffs, ends, margin, crit)
            else:
                out = run_flow(diffs, crit, ends, margin, running)
            wrong = false_claims(out["decided"], truth, margin)
            error = f"{wrong.mean():.5f} ± {math.sqrt(wrong.mean() * (1 - wrong.mean()) / wrong.size):.5f}"
            print(f"| {name} | {label} | {out['trainings'].mean():.1f} | {(out['decided'] != 0).all(axis=1).mean():.3f}"
                  f" | {out['at_first'].mean():.3f} | {error} | {wrong.any(axis=1).mean():.4f} |",
                  flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
