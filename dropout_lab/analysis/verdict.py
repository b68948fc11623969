"""The verdict in plain words, from the statistics (stats.py): each claim in its decision's own word with
the interval it rests on, where a gap change came from, the run's power, what the decisions rest on and
what the run measured. Values are fractions (accuracy, gap) or mean cross-entropy (loss); text shows
points (x100)."""

from __future__ import annotations

import math

from dropout_lab.analysis.stats import (
    ALPHA,
    DECIDED,
    METRICS,
    Comparison,
    by_variant,
    claim_alpha,
    compare_all,
)
from dropout_lab.config import BASELINE, Design, Variant, counted, family_noun

FULL_DATA = {"n_train": 50_000, "n_test": 10_000, "epochs": 8}
WORDS = {  # metric → (verb for a lower value than the baseline's, a higher one)
    "final_test_acc": ("lowered", "raised"),
    "final_train_eval_acc": ("lowered", "raised"),
    "generalization_gap": ("narrowed", "widened"),
    "final_test_loss": ("lowered", "raised"),
}


def _amount(metric: str, value: float, signed: bool = False) -> str:
    _, _, scale, unit = METRICS[metric]
    digits = 2 if scale == 100.0 else 3
    text = f"{value * scale:+.{digits}f}" if signed else f"{abs(value) * scale:.{digits}f}"
    return f"{text} {unit}".rstrip()


def _range(metric: str, low: float, high: float, signed: bool = True) -> str:
    """'-1.20 to +0.40 points'; 'no interval yet' where a look has none (too few seeds for its level)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return "no interval yet"
    _, _, scale, unit = METRICS[metric]
    digits = 2 if scale == 100.0 else 3
    sign = "+" if signed else ""
    return f"{low * scale:{sign}.{digits}f} to {high * scale:{sign}.{digits}f} {unit}".rstrip()


def _without_spread(d) -> bool:
    """The decision's last look shows no spread (or it has no look)."""
    return not (d.looks and d.looks[-1].spread)


def look_range(metric: str, d) -> str:
    """A look's interval in words; where it has none, why: its differences show no spread (more seeds alike
    decide nothing either), or it has too few seeds for its level ('no interval yet')."""
    if math.isfinite(d.low) and math.isfinite(d.high):
        return _range(metric, d.low, d.high)
    return "no interval: no spread" if _without_spread(d) else "no interval yet"


def p_text(p: float) -> str:
    """A p-value in the report's words: two significant digits, '< 0.0001' below."""
    return "n/a" if math.isnan(p) else ("< 0.0001" if p < 1e-4 else f"{p:.2g}" if p < 0.1 else f"{p:.2f}")


def _repeated(c: Comparison) -> str:
    return "repeated " if c.decision is not None and c.decision.sequential else ""


def level_text(c: Comparison, claims: int | None = None) -> str:
    """The level of the interval a claim rests on: '99.17% repeated CI' (the per-claim level of the family;
    'repeated' when seeds came in waves, a plain t-interval at one look)."""
    return f"{100 * (1 - ALPHA / (claims or c.family_size)):.2f}% {_repeated(c)}CI"


def repeated_p_words(c: Comparison, what: str) -> str:
    """'repeated p 0.0043 for a difference, 0.026 over 6 claims' (at one look: 'p ...')."""
    p = c.decision.repeated_p
    return f"{_repeated(c)}p {p_text(p)} for {what}, {p_text(min(1.0, p * c.family_size))} over {c.family_size} claims"


def describe(c: Comparison) -> str:
    """One claim in the decision's own word, at the level of its interval: better or worse (and whether
    the interval shows the change exceeds the margin), equivalent within the margin, or undecided after
    n seeds ("changed by"), each with the repeated interval and p-value it rests on."""
    d = c.decision
    name = METRICS[c.metric][0]
    if d is None:  # seeds that do not pair up: no decision, the unpaired interval only
        welch_ci = _range(c.metric, c.primary.ci_low, c.primary.ci_high)
        return f"{name} undecided ({c.design} seeds; 95% Welch CI {welch_ci}, fixed-sample)"
    interval = f"{_range(c.metric, d.low, d.high)}, {level_text(c)}"
    margin = _amount(c.metric, d.margin)
    change = _amount(c.metric, c.primary.diff, signed=True)
    if not (math.isfinite(d.low) and math.isfinite(d.high)):
        if _without_spread(d):
            return (f"{name} undecided after {counted(d.seeds_used, 'seed')}: changed by {change} (no interval: the "
                    "paired differences show no spread, and a look without spread decides nothing)")  # fmt: skip
        last = d.looks[-1]
        return (f"{name} undecided after {counted(d.seeds_used, 'seed')}: changed by {change} (no interval: the "
                f"most extreme of {last.n} seeds' 2^{last.n} sign patterns has a chance of 1 in {2**last.n:,}, more "
                f"than the {p_text((1 - last.level) / 2)} per side spent by then; more seeds can decide)")  # fmt: skip
    if d.decision == "equivalent":
        return f"{name} equivalent within ±{margin}: {change} ({interval}; {repeated_p_words(c, 'equivalence')})"
    if d.decision == "undecided":
        return (f"{name} undecided after {counted(d.seeds_used, 'seed')}: changed by {change} ({interval}: "
                f"neither clear of zero nor inside ±{margin}; {repeated_p_words(c, 'a difference')})")  # fmt: skip
    lower, higher = WORDS[c.metric]
    verb = lower if c.primary.diff < 0 else higher
    text = f"{name} {d.decision} — {verb} by {_amount(c.metric, c.primary.diff)} ({interval}; "
    text += f"{repeated_p_words(c, 'a difference')})"
    if margin_not_cleared(c):
        text += f", not shown to exceed ±{margin}"
    return text


def margin_not_cleared(c: Comparison) -> bool:
    """A better/worse claim whose interval is clear of zero but not of the ±margin."""
    d = c.decision
    return d.decision in ("better", "worse") and d.low < d.margin and d.high > -d.margin


def decision_words(c: Comparison) -> str:
    """A decided claim as the figure labels it, in the verdict's words: 'better', 'worse, not shown to exceed
    ±1.00 points', 'equivalent within ±1.00 points', 'undecided'."""
    d, margin = c.decision, _amount(c.metric, c.decision.margin)
    if d.decision == "equivalent":
        return f"equivalent within ±{margin}"
    return d.decision + (f", not shown to exceed ±{margin}" if margin_not_cleared(c) else "")


def gap_source(train: Comparison, test: Comparison, claims: int) -> str:
    """Where a change of the gap came from: Δgap = Δtrain − Δtest. The test side at its claim's level, 'rose'
    or 'fell' only where that claim is decided so; the train side on the sum of the gap's and test accuracy's
    intervals (it holds whenever they do), 'more' or 'less' only where that sum excludes zero."""

    def interval(c: Comparison, label: str) -> tuple[float, float, str]:
        d = c.decision
        if d is not None and d.looks and math.isfinite(d.low) and math.isfinite(d.high):
            return d.low, d.high, f"({_range(c.metric, d.low, d.high)}, {label})"
        low, high = c.primary.ci_low, c.primary.ci_high
        return low, high, f"(95% CI {_range(c.metric, low, high)}, fixed-sample)"

    low, high, shown = interval(train, "the sum of the two claims' intervals")
    if low > 0 or high < 0:
        train_text = f"the model fit the training images {_amount(train.metric, train.primary.diff)} " \
                     f"{'more' if train.primary.diff > 0 else 'less'} {shown}"  # fmt: skip
    else:
        train_text = f"training accuracy changed by {_amount(train.metric, train.primary.diff, signed=True)} {shown}"
    decided = test.decision.decision if test.decision else "undecided"
    if decided in ("better", "worse"):
        test_text = f"{'rose' if test.primary.diff > 0 else 'fell'} {_amount(test.metric, test.primary.diff)}"
    else:
        test_text = f"changed by {_amount(test.metric, test.primary.diff, signed=True)}"
    return f"{train_text} while test accuracy {test_text} {interval(test, level_text(test, claims))[2]}"


def power_line(c: Comparison, variant: Variant) -> str:
    """The run's power on `c.metric`, as a range: the smallest difference detected 80% of the time at
    the level its claim is tested at (the last look's boundary), over the 95% interval of the seeds'
    spread (never a promise of seeds)."""
    seeds = counted(c.n, f"{c.design} seed")
    name = METRICS[c.metric][0]
    if math.isnan(c.min_detectable[0]):
        return f"Power ({variant.words}, {name}): not estimable, the {seeds} show no spread."
    if math.isinf(c.min_detectable[0]):
        return (f"Power ({variant.words}, {name}): none at the last look's level (two-sided "
                f"{p_text(c.power_alpha)}): the {seeds}' 2^{c.n} sign patterns cannot reach it, whatever the "
                "difference.")  # fmt: skip
    detectable = _range(c.metric, *c.min_detectable, signed=False)
    return (f"Power ({variant.words}, {name}): with {seeds}, a true difference detected 80% of the time at the "
            f"last look's level (two-sided {p_text(c.power_alpha)}) is {detectable} (over the 95% range of the "
            "seeds' spread).")  # fmt: skip


def design_line(summary: list[dict], design: Design, comparisons: dict | None = None) -> str:
    """What the decisions rest on, in one sentence, at the level each holds."""
    per_claim, claims = claim_alpha(summary)
    variants = len(by_variant(summary)) - 1
    noun = family_noun([v for v in by_variant(summary) if not v.is_baseline])
    family = f"{claims} claims: {variants} {noun.removesuffix('s') if variants == 1 else noun} x "
    family += "test accuracy and gap"
    if design.looks and len(design.looks) > 1 or design.max_seeds:
        looks = ", ".join(map(str, design.looks))
        how = (f"seeds added in waves until decided (looks at {looks} of at most {design.max_seeds} seeds): repeated "
               "intervals of group-sequential sign-flip tests, each side spending (n/N)^2 of its half")  # fmt: skip
    else:
        how = "seeds fixed in advance: one look, sign-flip tests"
    return (f"Decisions: better / worse / equivalent within ±{100 * design.margin:.2f} points / undecided, each read "
            f"off its own {100 * (1 - per_claim):.2f}% interval (Bonferroni over {family}, so together they hold at "
            f">= 95% however the stopping went, if each claim's seed differences are symmetric about their mean, as "
            f"when a setting shifts the result of a pair of seeds alike; {how}). Repeated p-values are per claim and "
            "valid under the stopping; fixed-sample p-values, shown apart, ignore the looks. They are about this "
            f"recipe on these {summary[0]['n_test']:,} test images, seeds the only source of variation (initial "
            "weights, batch order, dropout masks, augmentation draws).")  # fmt: skip


def data_scope(summary: list[dict]) -> tuple[str | None, bool]:
    """(what the run measured when it is not the full default CIFAR-10 run, whether it was reduced:
    other data, fewer images or epochs). (None, False) for the full run on verified data."""
    row = summary[0]
    notes, reduced = [], False
    if row.get("dataset") == "fake":
        notes.append("generated images, not CIFAR-10: accuracies are meaningless")
        reduced = True
    elif row.get("data_verified") is False:
        notes.append("an unverified local copy of CIFAR-10, its md5s not the official ones")
    for split, key in (("training", "n_train"), ("test", "n_test")):
        used = row[key] + (row.get("n_val") or 0 if key == "n_train" else 0)  # held-out images are the set's too
        if used < FULL_DATA[key]:
            notes.append(f"{used:,} of {FULL_DATA[key]:,} {split} images")
            reduced = True
    if row["epochs"] != FULL_DATA["epochs"]:
        notes.append(f"{counted(row['epochs'], 'epoch')} instead of the recipe's {FULL_DATA['epochs']}")
        reduced = True
    return ("; ".join(notes) if notes else None), reduced


def answer_cost(summary: list[dict], waves: tuple[int, int] = (5, 20)) -> str:
    """For a one-seed run: the command that answers, and its cost from this run's measured training
    time (the trainings of a wave run as this run's did, so a wave of k seeds takes about k times). The
    epochs' own time, not the process's: a training restored from its checkpoints took seconds."""
    wall = max(r["epochs_seconds"] for r in summary) / 60
    low, high = waves[0] * wall, waves[1] * wall
    return (f"One seed per model cannot answer the question. For an answer: `python flows/compare.py --seeds auto` "
            f"trains {waves[0]} to {waves[1]} seeds per model until every claim is decided, about "
            f"{low:.0f}–{high:.0f} min here (this run's training took {wall:.1f} min).")  # fmt: skip


def verdict(summary: list[dict], design: Design = Design(), comparisons: dict | None = None) -> list[str]:
    """Plain-language verdict lines computed from the per-seed summary rows (`comparisons`: compare_all's,
    when already computed)."""
    scope, reduced = data_scope(summary)
    lines = []
    if reduced:
        lines.append(f"Reduced run ({scope}): a pipeline check, not an answer for CIFAR-10.")
    elif scope:
        lines.append(f"Data: {scope}.")
    variants = list(by_variant(summary))
    if len(variants) < 2 or BASELINE not in variants:
        return [*lines, "Only one model was trained: there is nothing to compare against."]
    comparisons = comparisons or compare_all(summary, design)
    gaps, accs, trains = (comparisons[m] for m in ("generalization_gap", "final_test_acc", "final_train_eval_acc"))
    if max(c.n for c in gaps.values()) < 2:
        lines.insert(0, answer_cost(summary))
    for v in variants[:-1]:
        gap, acc = gaps[v], accs[v]
        if gap.n < 2:
            lines.append(
                f"{v.words} vs baseline with one seed each: generalization gap "
                f"{_amount('generalization_gap', gap.primary.diff, signed=True)}, test accuracy "
                f"{_amount('final_test_acc', acc.primary.diff, signed=True)} — a single run per model cannot "
                "separate the variant's effect from seed noise: no interval, no decision."
            )
            continue
        gap_text = describe(gap)
        if gap.decision is not None and gap.decision.decision in ("better", "worse"):
            gap_text += ": " + gap_source(trains[v], acc, gap.family_size)
        lines.append(f"{v.words} vs baseline ({gap.n} {gap.design} seeds): {gap_text}; {describe(acc)}.")
        lines.append(power_line(acc, v))
    if max(c.n for c in gaps.values()) >= 2:
        lines.append(design_line(summary, design, comparisons))
    return lines


def open_claims(summary: list[dict], design: Design, comparisons: dict | None = None) -> dict[Variant, list[str]]:
    """The claims not decided yet, by variant ("dropout 0.1 test accuracy (-0.8 to +1.2 points)");
    a variant whose claims are all better, worse or equivalent is absent, and nothing is when all are."""
    comparisons = comparisons or compare_all(summary, design)
    found: dict[Variant, list[str]] = {}
    for m in DECIDED:
        for v, c in comparisons[m].items():
            if c.decision is None or c.decision.decision == "undecided":
                interval = f" ({look_range(m, c.decision)})" if c.decision else ""
                found.setdefault(v, []).append(f"{v.words} {METRICS[m][0]}{interval}")
    return found


def variants_words(variants) -> str:
    """`dropout 0.1, dropout 0.5 and the baseline`: variants as a sentence names them, in the report's
    order (the baseline, which every wave trains, last)."""
    names = [v.words for v in sorted(variants, key=Variant.order)]
    return f"{', '.join(names[:-1])} and the {names[-1]}" if len(names) > 1 else f"the {names[0]}"


def look_markdown(design: Design, comparisons: dict, training: set[Variant] | None, next_seeds: list[int],
                  budget_reached: bool) -> str:  # fmt: skip
    """One look of `--seeds auto` as the run page shows it: each claim's decision and interval at this
    look, then what happens next (the next wave's variants and seeds, or why it stops). `training`: the
    variants of the next wave; None when no wave follows."""
    seeds, look = design.looks[-1], len(design.looks)
    lines = [f"# Look {look}: after {counted(seeds, 'seed')}", "",
             "| vs baseline | claim | decision | difference (repeated CI) | seeds |",
             "|---|---|---|---|---|"]  # fmt: skip
    for m in DECIDED:
        for v, c in sorted(comparisons[m].items(), key=lambda item: Variant.order(item[0])):
            d = c.decision
            interval = look_range(m, d) if d else "no paired seeds"
            lines.append(f"| {v.words} | {METRICS[m][0]} | {d.decision if d else 'undecided'} | {interval} | {c.n} |")
    lines.append("")
    if training is not None:
        which = variants_words(training)
        seeds_text = f"seed {next_seeds[0]}" if len(next_seeds) == 1 else f"seeds {next_seeds[0]}–{next_seeds[-1]}"
        lines.append(f"Next: {seeds_text} of {which} (a variant whose claims are all decided trains no more).")
    elif budget_reached:
        lines.append(f"Stopped: budget reached (--max-seeds {design.max_seeds}); the undecided claims stay undecided.")
    else:
        lines.append("Stopped: every claim decided.")
    return "\n".join(lines) + "\n"
