"""What `--seeds auto` will cost, asked before the seeds are spent: the design simulated at the spreads
the run's first look measured (its pilot), every later seed drawn from a normal with each variant's
observed mean and covariance of its paired (test accuracy, gap) differences. The first look's seeds are
the run's own, so its decisions are the run's; the rest is a forecast, only as good as five seeds'
estimate of the spread, and it ignores that the variants share the baseline's seeds."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dropout_lab.analysis.sequential import planned_ends
from dropout_lab.analysis.signflip import decided_at, no_spread, spending
from dropout_lab.analysis.stats import claim_alpha
from dropout_lab.config import counted, variant_of

RUNS = 500  # simulated runs: the probability's standard error is at most 0.022 (the time: benchmarks/RESULTS.md)
SEED = 20261207  # fixed: the same first look always gives the same plan


@dataclass(frozen=True)
class Plan:
    seeds: int  # the first look's seeds the plan starts from
    trainings: float  # expected trainings of the whole run, the first look's included
    most: int  # trainings if no claim is decided before --max-seeds
    decided: float  # probability that every claim is decided within --max-seeds
    seconds_left: float | None  # expected wall time after the first look, at its pace

    def words(self) -> str:
        left = "" if self.seconds_left is None else f"; {duration(self.seconds_left)} more at its pace"
        return (f"from the first look ({counted(self.seeds, 'seed')}): about {self.trainings:.0f} trainings in all "
                f"(at most {self.most}), every claim decided within --max-seeds in {100 * self.decided:.0f}% of "
                f"simulated runs{left}")  # fmt: skip


def duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    if minutes < 1:
        return "under a minute"
    return f"about {minutes} min" if minutes < 60 else f"about {minutes // 60} h {minutes % 60:02d} min"


def paired_differences(summary: list[dict]) -> dict[str, np.ndarray]:
    """Per variant, its (test accuracy, gap) differences from the baseline, one row per shared seed."""
    base = {r["seed"]: r for r in summary if r["baseline"]}
    out: dict[str, list] = {}
    for r in sorted(summary, key=lambda r: r["seed"]):
        if not r["baseline"] and r["seed"] in base:
            b = base[r["seed"]]
            out.setdefault(r["model"], []).append((r["final_test_acc"] - b["final_test_acc"],
                                                   r["generalization_gap"] - b["generalization_gap"]))  # fmt: skip
    return {model: np.array(rows, dtype=float) for model, rows in out.items()}


def plan(summary: list[dict], max_seeds: int, margin: float, wave_seconds: float | None = None) -> Plan:
    """The plan after the first look: `summary` its rows, `wave_seconds` the wall time its trainings took."""
    observed = paired_differences(summary)
    alpha, _ = claim_alpha(summary)
    ends = planned_ends(max_seeds)
    spend = spending(ends, max_seeds, alpha)
    rng = np.random.default_rng(SEED)
    seen = min(min(len(d) for d in observed.values()), max_seeds)  # seeds past the budget: the run has none
    diffs = np.empty((RUNS, len(observed), 2, max_seeds))
    for v, d in enumerate(observed.values()):
        d, mean = d[:seen], d[:seen].mean(axis=0)
        cov = np.cov(d.T) + 1e-12 * np.eye(2)  # positive definite where a claim shows no spread
        diffs[:, v, :, :seen] = d.T
        diffs[:, v, :, seen:] = rng.multivariate_normal(mean, cov, size=(RUNS, max_seeds - seen)).transpose(0, 2, 1)
        for claim, sd in enumerate(d.std(axis=0, ddof=1)):
            if no_spread(float(sd), float(mean[claim])):  # a normal without spread: every later seed the same
                diffs[:, v, claim, seen:] = mean[claim]
    stops = np.array(
        [[max(decided_at(claim, ends, spend, margin) for claim in variant) for variant in run] for run in diffs]
    )  # (runs, variants): the look after which each variant stops training
    seeds = np.array(ends)[np.minimum(stops, len(ends) - 1)]
    trainings = seeds.sum(axis=1) + seeds.max(axis=1)  # each variant's seeds, the baseline's while any trains
    decided = (stops < len(ends)).all(axis=1)
    first = (len(observed) + 1) * ends[0]
    left = None if wave_seconds is None else max(0.0, float(trainings.mean()) - first) * wave_seconds / first
    return Plan(ends[0], float(trainings.mean()), (len(observed) + 1) * max_seeds, float(decided.mean()), left)


RECIPE = ("dataset", "epochs", "batch_size", "lr")  # beside the compared settings: what makes trainings alike


def recipe_seeds(rows: list[dict], variants: set, recipe: dict, n_train: int = 0, n_test: int = 0) -> list[dict]:
    """The history's latest record of each (variant, seed) trained to this recipe: the same RECIPE fields,
    one of `variants`, on `n_train`/`n_test` images (0: the most any such record used, the whole data)."""
    alike = [r for r in rows if variant_of(r) in variants and all(r.get(f) == recipe[f] for f in RECIPE)]
    for field, wanted in (("n_train", n_train), ("n_test", n_test)):
        wanted = wanted or max((r[field] for r in alike), default=0)
        alike = [r for r in alike if r[field] == wanted]
    latest = {(variant_of(r), r["seed"]): r for r in alike}  # rows come oldest first: the latest stays
    return sorted(latest.values(), key=lambda r: r["seed"])


def before_run(rows: list[dict], variants: int, max_seeds: int, margin: float, slots: int) -> str | None:
    """The plan from seeds already trained to this recipe (`recipe_seeds`), before any training, in words;
    None unless every one of the `variants` has two seeds paired with the baseline. Its time is the whole
    run's at the pace of those trainings (their median) on `slots` devices (seeds still cached take none)."""
    paired = paired_differences(rows)
    if len(paired) < variants or min((len(d) for d in paired.values()), default=0) < 2:
        return None
    per_training = float(np.median([max(r["train_seconds"] or 0, r.get("epochs_seconds") or 0) for r in rows]))
    forecast = plan(rows, max_seeds, margin)
    seen = min(min(len(d) for d in paired.values()), max_seeds)
    return (f"from {counted(seen, 'seed')} of this recipe already trained: about {forecast.trainings:.0f} trainings "
            f"in all (at most {forecast.most}), every claim decided within --max-seeds in "
            f"{100 * forecast.decided:.0f}% of simulated runs; "
            f"{duration(forecast.trainings * per_training / max(1, slots))} at their pace on "
            f"{counted(max(1, slots), 'device slot')} (trainings still cached take none)")  # fmt: skip
