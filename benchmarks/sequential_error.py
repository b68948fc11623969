"""How often `--seeds auto` makes a false claim, by simulation, against retesting after every wave.

    python benchmarks/sequential_error.py [--sequences 2000] [--seed 0]

Each simulated run compares three rates with the baseline on test accuracy and on the gap (six claims),
adding waves of 5 seeds (up to 20) until every claim is decided, as the flow does (a rate whose claims are
all decided trains no more seeds: the trainings column counts what a run costs). Per-seed paired
differences are drawn as normal with this problem's measured standard deviations (benchmarks/RESULTS.md,
the five-seed run on the stand-in) and the scenario's true means. A claim is false when the truth
contradicts it: *better*/*worse* with the wrong sign or a true difference of zero, *equivalent* when the
true difference is at least the margin (1 point). Printed side by side, on the same draws:

- the project's procedure: `dropout_lab.analysis.sequential.decision` (repeated intervals of a
  group-sequential design, O'Brien-Fleming-type spending, Bonferroni over the six claims);
- naive: a plain 95% paired t-interval per claim after every wave, stopping when all are decided.

The family-wise false-decision rate (any false claim in a run) should stay at or below 0.05 for the
project's procedure under every scenario.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import stats as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dropout_lab.analysis.sequential import decide, decision  # noqa: E402
from dropout_lab.analysis.stats import ALPHA  # noqa: E402
from dropout_lab.config import WAVE  # noqa: E402

# (rate, metric) -> (measured mean, measured sd) of the per-seed paired difference, points
# (five seeds; sd from the 95% t-intervals of RESULTS.md: half-width * sqrt(5) / t(0.975, 4)).
MEASURED = {
    (0.1, "test accuracy"): (0.58, 0.475),
    (0.25, "test accuracy"): (0.50, 0.435),
    (0.5, "test accuracy"): (-1.95, 0.50),
    (0.1, "gap"): (-3.92, 1.05),
    (0.25, "gap"): (-7.65, 1.05),
    (0.5, "gap"): (-11.75, 0.68),
}
HIGHER_IS_BETTER = {"test accuracy": True, "gap": False}
MARGIN = 1.0
MAX_SEEDS = 20
SCENARIOS = {
    "as measured": {k: mean for k, (mean, _) in MEASURED.items()},
    "no effect anywhere": dict.fromkeys(MEASURED, 0.0),
    # equivalence's hardest case: test accuracy exactly one margin away; gaps as measured
    "test accuracy at the margin": {
        k: (MARGIN if k[0] < 0.5 else -MARGIN) if k[1] == "test accuracy" else m for k, (m, _) in MEASURED.items()
    },  # fmt: skip
}


def false_claim(claim: str, truth: float, higher_is_better: bool) -> bool:
    if claim == "equivalent":
        return abs(truth) >= MARGIN
    if claim in ("better", "worse"):
        positive = (claim == "better") == higher_is_better  # the claim says the difference is > 0
        return truth == 0 or (truth > 0) != positive
    return False


def ours(diffs: np.ndarray, looks: list[int], higher: list[bool]) -> list[str]:
    per_claim = ALPHA / len(higher)
    return [decision(d[: looks[-1]], looks, MAX_SEEDS, per_claim, MARGIN, h).decision
            for d, h in zip(diffs, higher, strict=True)]  # fmt: skip


def naive(diffs: np.ndarray, looks: list[int], higher: list[bool]) -> list[str]:
    n = looks[-1]
    out = []
    for d, h in zip(diffs, higher, strict=True):
        part = d[:n]
        half = st.t.ppf(1 - ALPHA / 2, n - 1) * part.std(ddof=1) / np.sqrt(n)
        out.append(decide(part.mean() - half, part.mean() + half, MARGIN, h))
    return out


def simulate(sequences: int, seed: int) -> list[dict]:
    keys = list(MEASURED)
    sds = np.array([MEASURED[k][1] for k in keys])
    higher = [HIGHER_IS_BETTER[k[1]] for k in keys]
    rows = []
    for name, truths in SCENARIOS.items():
        mu = np.array([truths[k] for k in keys])
        draws = np.random.default_rng(seed).standard_normal((sequences, len(keys), MAX_SEEDS))
        for label, procedure in (("group-sequential (ours)", ours), ("naive: 95% CI after each wave", naive)):
            false = seeds = decided = trainings = 0
            for z in draws:
                diffs = mu[:, None] + sds[:, None] * z
                looks: list[int] = []
                training = {rate for rate, _ in keys}  # as the flow: a rate with every claim decided stops
                for n in range(WAVE, MAX_SEEDS + 1, WAVE):
                    looks.append(n)
                    trainings += WAVE * (len(training) + 1)  # this wave's seeds of each model + baseline
                    claims = procedure(diffs, looks, higher)
                    if "undecided" not in claims:
                        break
                    training = {rate for (rate, _), c in zip(keys, claims, strict=True) if c == "undecided"}
                false += any(false_claim(c, t, h) for c, t, h in zip(claims, mu, higher, strict=True))
                seeds += looks[-1]
                decided += "undecided" not in claims
            rows.append({"scenario": name, "procedure": label, "false": false / sequences,
                         "seeds": seeds / sequences, "decided": decided / sequences,
                         "trainings": trainings / sequences})  # fmt: skip
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sequences", type=int, default=2000, help="simulated runs per scenario (default 2000)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = simulate(args.sequences, args.seed)
    print(f"{args.sequences} simulated runs per scenario; 6 claims each; waves of {WAVE} up to {MAX_SEEDS} seeds; "
          f"margin ±{MARGIN:g} point")  # fmt: skip
    print("| scenario | procedure | runs with a false claim | mean seeds | every claim decided "
          "| trainings (decided rates stop) | trainings (every model to the end) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    models = len({rate for rate, _ in MEASURED}) + 1
    for r in rows:
        print(f"| {r['scenario']} | {r['procedure']} | {r['false']:.3f} | {r['seeds']:.1f} | {r['decided']:.2f} "
              f"| {r['trainings']:.1f} | {models * r['seeds']:.1f} |")  # fmt: skip
    worst = max(r["false"] for r in rows if r["procedure"].endswith("(ours)"))
    print(f"worst false-decision rate of ours: {worst:.3f} (target <= {ALPHA})")
    return 0 if worst <= ALPHA else 1


if __name__ == "__main__":
    sys.exit(main())
