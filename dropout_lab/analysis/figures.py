"""The report's figures: the comparison (curves, gap and per-class accuracy), the decisions (each variant
vs the baseline, at the level of each claim) and a grid of sample images. Plain text only (no mathtext):
class names and titles come from files."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from dropout_lab.analysis.stats import Comparison, by_variant, compare_all, mean_ci  # noqa: E402
from dropout_lab.analysis.tables import per_class_accuracy  # noqa: E402
from dropout_lab.analysis.verdict import decision_words, design_line, level_text, look_range  # noqa: E402
from dropout_lab.config import SETTING, Design, Variant, family_noun, variant_of  # noqa: E402
from dropout_lab.core.data import CLASSES  # noqa: E402
from dropout_lab.results import TrainResult  # noqa: E402

BASELINE_COLOR = "#d62728"  # the baseline red; each setting's variants from its own colormap ramp


def color(variant: Variant, variants: list[Variant]):
    """The baseline red; a variant of one setting a shade of that setting's colormap, darker for a
    larger value among the run's variants of that setting (several settings at once: grey)."""
    if variant.is_baseline:
        return BASELINE_COLOR
    if len(variant.settings) > 1:
        return "#555555"
    field, _ = variant.settings[0]
    same = [v for v in variants if len(v.settings) == 1 and v.settings[0][0] == field]
    return plt.get_cmap(SETTING[field].colormap)(0.45 + 0.5 * (same.index(variant) + 1) / len(same))


def _band(ax, x, runs: np.ndarray, color, style: str, label: str, clip=(0.0, 100.0), **line) -> None:
    """Mean over seeds (rows of `runs`), with a shaded 95% t-interval when there are 2+ seeds,
    clipped to the quantity's possible range (an accuracy band never dips below 0%)."""
    mean = runs.mean(axis=0)
    ax.plot(x, mean, style, color=color, ms=4, label=label, **line)
    if len(runs) > 1:
        ests = [mean_ci(col) for col in runs.T]
        low, high = (np.clip([getattr(e, end) for e in ests], *clip) for end in ("ci_low", "ci_high"))
        ax.fill_between(x, low, high, color=color, alpha=0.18, lw=0)


MIN_RATE_AXIS_SPAN = 10.0  # points: a variant panel never zooms in tighter than this (seed noise is ~1-2 points)


def _rate_axis_limits(values: list[float], clip: tuple[float, float], include_zero: bool) -> tuple[float, float]:
    """y-limits for a rate panel: the data with a margin, at least MIN_RATE_AXIS_SPAN tall (so a
    1-point difference looks like one), zero included for differences, within `clip`."""
    low, high = min(values), max(values)
    if include_zero:
        low, high = min(low, 0.0), max(high, 0.0)
    margin = max((MIN_RATE_AXIS_SPAN - (high - low)) / 2, 0.1 * (high - low))
    low, high = low - margin, high + margin
    if low < clip[0]:
        low, high = clip[0], max(high, clip[0] + MIN_RATE_AXIS_SPAN)
    if high > clip[1]:
        low, high = min(low, clip[1] - MIN_RATE_AXIS_SPAN), clip[1]
    return low, high


def panel_positions(variants: list[Variant]) -> tuple[dict[Variant, float], str, bool]:
    """(x position per variant, x label, numeric axis?): variants of one number setting at their values
    (the baseline at the setting's off value), else (words, several settings) side by side in report order."""
    noun = family_noun([v for v in variants if not v.is_baseline] or variants)
    fields = {field for v in variants for field, _ in v.settings}
    if noun != "variants" and len(fields) == 1 and SETTING[next(iter(fields))].numeric:
        setting = SETTING[fields.pop()]
        return {v: dict(v.settings).get(setting.field, setting.off) for v in variants}, setting.words, True
    order = sorted(variants, key=lambda v: (not v.is_baseline, v.order()))  # the baseline first, on the left
    return {v: float(i) for i, v in enumerate(order)}, "variant", False


def plot_rate_panel(ax, summary: list[dict], metric: str, what: str, clip=(0.0, 100.0), include_zero=False) -> None:
    """`metric` (in points) per variant: every seed as a dot, the mean with its 95% t-interval; variants
    of one setting stand at their values, and a line joins them only when there are at least 3."""
    groups = by_variant(summary)
    variants = list(groups)
    x_of, xlabel, numeric = panel_positions(variants)
    order = sorted(variants, key=lambda v: x_of[v])
    xs = [x_of[v] for v in order]
    values = {v: [row[metric] * 100 for row in groups[v]] for v in order}
    ests = [mean_ci(values[v]) for v in order]
    nudge = 0.02 * max(max(xs) - min(xs), 0.25)  # seeds' dots just left of their mean and CI
    for v in order:
        ax.scatter([x_of[v] - nudge] * len(values[v]), values[v], color=color(v, variants), s=14, alpha=0.7, zorder=3)
    has_ci = [e.n > 1 for e in ests]
    err = [[e.mean - e.ci_low if ok else 0 for e, ok in zip(ests, has_ci, strict=True)],
           [e.ci_high - e.mean if ok else 0 for e, ok in zip(ests, has_ci, strict=True)]]  # fmt: skip
    ax.errorbar(xs, [e.mean for e in ests], yerr=err, fmt="D", ms=5, color="#1f4e79", capsize=5,
                ls="-" if numeric and len(xs) >= 3 else "none", label="mean, 95% CI over seeds")  # fmt: skip
    shown = [v for x in order for v in values[x]] + [e.ci_low for e in ests if e.n > 1] + \
        [e.ci_high for e in ests if e.n > 1]  # fmt: skip
    ax.set_ylim(*_rate_axis_limits(shown, clip, include_zero))
    if include_zero:
        ax.axhline(0, color="grey", lw=0.8)
    if not any(has_ci):
        ax.text(0.5, 0.03, "one seed per variant: no interval", transform=ax.transAxes, ha="center", fontsize=9)
    ax.set(title=f"{what.split(' (')[0].capitalize()} per {xlabel}", xlabel=xlabel, ylabel=what)
    if numeric:
        ax.set_xticks(xs)
        ax.set_xlim(min(xs) - 0.05 * max(max(xs), 1), max(xs) + 0.05 * max(max(xs), 1))
    else:
        ax.set_xticks(xs, [v.words for v in order], rotation=20, ha="right")
        ax.set_xlim(min(xs) - 0.5, max(xs) + 0.5)


def plot_difference_panel(ax, comparisons: dict[Variant, Comparison], what: str,
                          sources: dict[Variant, str] | None = None) -> None:  # fmt: skip
    """What the verdict tests: per variant, each seed's paired difference to the baseline (dots), the
    interval the decision rests on (bar, its level in the title) with the verdict's words for it (and, for
    the gap, `sources`: its train and test sides), the ±margin band and zero."""
    variants = list(comparisons)
    if not variants:
        ax.text(0.5, 0.5, "no variant to compare", transform=ax.transAxes, ha="center")
        return
    x_of, xlabel, numeric = panel_positions(variants)
    order = sorted(variants, key=lambda v: x_of[v])
    margin = next((c.decision.margin for c in comparisons.values() if c.decision), None)
    if margin is not None:
        ax.axhspan(-100 * margin, 100 * margin, color="#9ecae1", alpha=0.35, lw=0, label=f"±{100 * margin:.2f} margin")
    ax.axhline(0, color="grey", lw=0.8)
    span = max(x_of.values()) - min(x_of.values())
    nudge = 0.03 * max(span, 0.25)
    for v in order:
        c, x = comparisons[v], x_of[v]
        diffs = [100 * d for d in (c.paired.diffs if c.paired else ())]
        ax.scatter([x - nudge] * len(diffs), diffs, color=color(v, variants), s=14, alpha=0.7, zorder=3)
        if c.decision and c.decision.looks and np.isfinite([c.decision.low, c.decision.high]).all():
            low, high, mean = 100 * c.decision.low, 100 * c.decision.high, 100 * c.primary.diff
            # the interval (the looks' intervals intersected) need not be centred on the last look's mean
            ax.vlines(x, low, high, color="#1f4e79", lw=3, zorder=4)
            ax.plot([x], [mean], "D", ms=5, color="#1f4e79", zorder=5)
            # Narrow lines (the outer bars' words, centred, ran past the frame): 20 characters at most
            word = "\n".join(textwrap.wrap(decision_words(c), 20) + ([sources[v]] if sources and v in sources else []))
            ax.annotate(word, (x, max([high, *diffs])), textcoords="offset points", xytext=(0, 6), ha="center",
                        fontsize=9, color="#1f4e79")  # fmt: skip
        elif c.decision and c.decision.looks:  # said, not a bare dot that the margin band seems to hold
            ax.annotate(f"undecided\n{look_range(c.metric, c.decision)}", (x, max(diffs, default=0.0)),
                        textcoords="offset points", xytext=(0, 6), ha="center", fontsize=9,
                        color="#1f4e79")  # fmt: skip
    if not any(c.decision and c.decision.looks for c in comparisons.values()):
        ax.text(0.5, 0.03, "one seed per variant: no interval, no decision", transform=ax.transAxes, ha="center",
                fontsize=9)  # fmt: skip
    bottom, top = ax.get_ylim()
    ax.set_ylim(bottom, top + 0.25 * (top - bottom))  # room for the words above the highest dot
    levels = sorted({level_text(c) for c in comparisons.values() if c.decision and c.decision.looks})
    ax.set(title=f"{what}: variant − baseline per seed; bars: {', '.join(levels) or 'no interval'}", xlabel=xlabel,
           ylabel="points")  # fmt: skip
    if numeric:
        ax.set_xticks([x_of[v] for v in order])
        ax.set_xlim(min(x_of.values()) - 0.15 * max(span, 0.5), max(x_of.values()) + 0.15 * max(span, 0.5))
    else:
        ax.set_xticks([x_of[v] for v in order], [v.words for v in order], rotation=20, ha="right")
        ax.set_xlim(min(x_of.values()) - 0.5, max(x_of.values()) + 0.5)
    if margin is not None:
        ax.legend(fontsize=8, loc="lower left")


def plot_waves_panel(ax, comparisons: dict[str, dict[Variant, Comparison]], legend_ax=None) -> None:
    """--seeds auto: each claim's repeated interval after each wave of seeds, narrowing until decided. The
    legend goes on `legend_ax` where given: inside the panel it covers the intervals it names."""
    looks = max((len(c.decision.looks) for m in comparisons.values() for c in m.values() if c.decision), default=0)
    if looks < 2:
        ax.axis("off")
        ax.text(0.5, 0.5, "seeds fixed in advance: one look\n(--seeds auto adds waves until decided)",
                transform=ax.transAxes, ha="center", va="center", fontsize=10)  # fmt: skip
        return
    claims = [(m, v, c) for m, per in comparisons.items() for v, c in per.items() if c.decision]
    offsets = np.linspace(-0.8, 0.8, len(claims)) if len(claims) > 1 else [0.0]
    unbounded = False
    for (metric, v, c), dx in zip(claims, offsets, strict=True):
        ns = [look.n + dx for look in c.decision.looks]
        mid = [100 * look.mean for look in c.decision.looks]
        # A look without an interval (the whole line: too few seeds for its level, or no spread): its mean
        # alone, hollow, so that it does not read as a precise estimate.
        err = np.array([[100 * (look.mean - look.low) for look in c.decision.looks],
                        [100 * (look.high - look.mean) for look in c.decision.looks]])  # fmt: skip
        err[~np.isfinite(err)] = np.nan  # no bar, no cap
        alone = [k for k, look in enumerate(c.decision.looks) if not np.isfinite(look.high - look.low)]
        name, marker = ("test acc", "o") if metric == "final_test_acc" else ("gap", "s")
        bars = ax.errorbar(ns, mid, yerr=err, fmt=marker + ("-" if name == "test acc" else "--"), ms=4, capsize=3,
                           markevery=[k for k in range(len(ns)) if k not in alone],
                           label=f"{v.words}, {name}: {decision_words(c)}")  # fmt: skip
        if alone:
            unbounded = True
            ax.plot([ns[k] for k in alone], [mid[k] for k in alone], marker, ms=5, mfc="white", zorder=3,
                    color=bars.lines[0].get_color())  # fmt: skip
    if unbounded:
        ax.plot([], [], "o", mfc="white", color="grey", label="hollow: no interval at that look (too few seeds for "
                "its level, or no spread)")  # fmt: skip
    margin = 100 * claims[0][2].decision.margin
    ends = [100 * e for _, _, c in claims for look in c.decision.looks for e in (look.low, look.high)]
    reach = max([abs(e) for e in ends if np.isfinite(e)] + [2 * margin])
    ax.set_ylim(-1.3 * reach, 1.3 * reach)  # the widest look's interval inside the axes
    ax.axhspan(-margin, margin, color="#9ecae1", alpha=0.35, lw=0)
    ax.axhline(0, color="grey", lw=0.8)
    # The first look of a long plan spends almost none of the error (intervals of ±50 points beside later
    # ones of ±1): linear inside the margin, logarithmic beyond, so every look stays readable.
    ax.set_yscale("symlog", linthresh=margin)
    ticks = [t for t in (1, 3, 10, 30, 100, 300) if t * margin <= 1.3 * reach]
    ax.set_yticks(sorted({0.0, *(sign * t * margin for t in ticks for sign in (-1, 1))}))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))  # 10, not 10¹
    ax.set(title=f"Each claim's {level_text(claims[0][2])} after each wave of seeds", xlabel="seeds",
           ylabel="difference, points (linear within ±margin, log beyond)")  # fmt: skip
    if legend_ax is None:
        ax.legend(fontsize=7)
    else:
        legend_ax.legend(*ax.get_legend_handles_labels(), fontsize=7, loc="lower left",
                         title="Each claim after each wave (above)", title_fontsize=8)  # fmt: skip


def plot_comparison(results: list[TrainResult], title: str, path: Path) -> None:
    """Per epoch, mean over seeds with 95% bands: accuracy, loss and the gap; per-class test accuracy of the
    final models."""
    fig, axes = plt.subplots(2, 2, figsize=(15, 10.5))
    ax_acc, ax_loss, ax_gap, ax_cls = axes.flat
    groups: dict[Variant, list[TrainResult]] = {}
    for r in results:  # in report order already
        groups.setdefault(variant_of(r.config), []).append(r)
    variants = list(groups)
    for variant, runs in groups.items():
        label, shade = variant.name, color(variant, variants)
        n = f" (n={len(runs)})" if len(runs) > 1 else ""
        epochs = min(len(r.history) for r in runs)
        x = np.arange(1, epochs + 1)

        def metric(key: str, scale: float = 1.0, runs=runs, epochs=epochs) -> np.ndarray:
            return np.array([[h[key] * scale for h in r.history[:epochs]] for r in runs])

        # The titles say which line is which (dashed, solid, dotted); the legends name the colours alone: one
        # entry per model, not three, so that they fit beside the curves instead of over them.
        _band(ax_acc, x, metric("train_eval_acc", 100), shade, "--", "_train")
        _band(ax_acc, x, metric("test_acc", 100), shade, "-o", label + n)
        if runs[0].config.dropout > 0:  # with dropout on, the running number sits below the eval-mode one
            _band(ax_acc, x, metric("train_running_acc", 100), shade, ":", "_running", lw=1)
        _band(ax_loss, x, metric("train_eval_loss"), shade, "--", "_train", clip=(0, np.inf))
        _band(ax_loss, x, metric("test_loss"), shade, "-o", label + n, clip=(0, np.inf))
        gap = metric("train_eval_acc", 100) - metric("test_acc", 100)
        _band(ax_gap, x, gap, shade, "-o", label + n, clip=(-100, 100))
    ax_acc.set(title="Accuracy: train (eval mode) dashed, test solid, running (dropout on) dotted", xlabel="epoch",
               ylabel="accuracy (%)")  # fmt: skip
    ax_loss.set(title="Cross-entropy: train (eval mode) dashed, test solid", xlabel="epoch", ylabel="mean loss")
    ax_gap.set(title="Generalization gap: train (eval mode) − test accuracy", xlabel="epoch", ylabel="points")
    ax_gap.axhline(0, color="grey", lw=0.8)

    width = 0.8 / max(len(groups), 1)
    x = np.arange(len(CLASSES))
    for i, (variant, runs) in enumerate(groups.items()):
        per_class = np.array([per_class_accuracy(r.history[-1]["test_confusion"]) for r in runs]) * 100
        acc = np.mean([r.history[-1]["test_acc"] for r in runs])
        ax_cls.bar(x + (i - (len(groups) - 1) / 2) * width, per_class.mean(axis=0), width,
                   color=color(variant, variants), label=f"{variant.name} ({acc:.1%})")  # fmt: skip
    ax_cls.set_xticks(x, CLASSES, rotation=35, ha="right")
    ax_cls.set(title="Per-class test accuracy (final models, mean over seeds)", ylabel="accuracy (%)", ylim=(0, 100))
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in (ax_acc, ax_loss, ax_gap):
        ax.xaxis.get_major_locator().set_params(integer=True)
    _save(fig, title, path)


def plot_decisions(summary: list[dict], title: str, path: Path, design: Design = Design(),
                   comparisons: dict | None = None) -> None:  # fmt: skip
    """What the verdict rests on, drawn from the per-seed rows alone (docs/answer is redrawn from them): the
    paired differences with each decision's interval at its level, the gap's train and test sides, the
    intervals look by look, each variant's own final test accuracy and gap."""
    fig, axes = plt.subplots(2, 3, figsize=(20, 10.5))
    ax_diff_acc, ax_diff_gap, ax_waves, ax_rate_acc, ax_rate_gap, ax_words = axes.flat
    comparisons = comparisons or compare_all(summary, design)
    plot_difference_panel(ax_diff_acc, comparisons["final_test_acc"], "Test accuracy")
    sides = {
        v: f"train {100 * t.primary.diff:+.2f}\ntest {100 * comparisons['final_test_acc'][v].primary.diff:+.2f}"
        for v, t in comparisons["final_train_eval_acc"].items()
    }  # where each gap change came from
    plot_difference_panel(ax_diff_gap, comparisons["generalization_gap"], "Generalization gap", sides)
    plot_waves_panel(ax_waves, {m: comparisons[m] for m in ("final_test_acc", "generalization_gap")}, ax_words)
    plot_rate_panel(ax_rate_acc, summary, "final_test_acc", "final test accuracy (%)")
    plot_rate_panel(ax_rate_gap, summary, "generalization_gap", "final gap (points)", (-100, 100), True)
    ax_words.axis("off")
    basis = design_line(summary, design, comparisons)  # the verdict's own sentence: what the bars are
    ax_words.text(0, 1, textwrap.fill(basis, 72), va="top", fontsize=9, transform=ax_words.transAxes)
    for ax in axes.flat[:5]:
        ax.grid(alpha=0.3)
    ax_rate_acc.legend(fontsize=8)
    _save(fig, title, path)


def _save(fig, title: str, path: Path) -> None:
    fig.suptitle(title, fontsize=13)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_samples(images: np.ndarray, labels: np.ndarray, class_names: list[str], title: str, path: Path) -> None:
    """5×5 grid of training images (N, 32, 32, 3) uint8 with their class names: one mosaic in one
    axes (25 titled axes and a tight layout draw about ten times slower)."""
    images, labels = images[:25], labels[:25]
    rows, side, gap, label = 5, images.shape[1], 3, 9  # pixels: image, gap between, label band above
    cell_h, cell_w = label + side + gap, side + gap
    mosaic = np.full((rows * cell_h, rows * cell_w, 3), 255, dtype=np.uint8)  # white, like the figure
    height = 7 * mosaic.shape[0] / mosaic.shape[1]  # inches, for 7 wide; plus a band for the title
    fig = plt.figure(figsize=(7, height + 0.4))
    ax = fig.add_axes((0, 0, 1, height / (height + 0.4)))
    for i, (img, lab) in enumerate(zip(images, labels, strict=True)):
        top, left = (i // rows) * cell_h + label, (i % rows) * cell_w + gap // 2
        mosaic[top : top + side, left : left + side] = img
        ax.text(left + side / 2, top - 2, class_names[int(lab)], ha="center", va="bottom", fontsize=9)
    ax.imshow(mosaic, interpolation="nearest")
    ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=80)
    plt.close(fig)
