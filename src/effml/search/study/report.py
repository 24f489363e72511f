"""A study as a report a person reads: the best trials, the accuracy-latency and accuracy-MACs
Pareto plots, the comparison with random search of the same size (``baseline.py``), and one
self-contained ``report.html`` that opens offline (inline CSS, the plots embedded as data URIs, no
scripts, nothing fetched); the same facts as ``report.json`` and as text (``text_report``).

Reads the record the search writes (``study.py``): the objective and config in the study's user
attributes; each complete trial's ``metrics``, ``spec``, ``overrides`` and seed in its own.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from effml.errors import SearchError, SpecError
from effml.files import atomic_write_bytes, atomic_write_text
from effml.search.study.baseline import compare_with_random
from effml.search.study.reward import CONSTRAINTS
from effml.search.study.storage import recommended_trial
from effml.spec.notation import format_arch
from effml.zoo import spec_from_dict

TrialState = optuna.trial.TrialState
FrozenTrial = optuna.trial.FrozenTrial

# The plots' colours; the browser test looks for FRONT_COLOR in a screenshot of the report.
TRIAL_COLOR = "#5b7fa6"
FRONT_COLOR = "#e8590c"
BEST_COLOR = "#c92a2a"
TARGET_COLOR = "#6741d9"
_MAX_ERRORS = 20  # failed trials listed in the report; the rest are counted
_MAX_ERROR_CHARS = 300


@dataclass(frozen=True)
class Report:
    """The files ``write_report`` wrote."""

    html: Path
    pareto_latency: Path
    pareto_macs: Path
    csv: Path
    json: Path
    summary: dict[str, Any]  # what report.json holds; text_report(summary) prints it


def pareto_front(points: Sequence[tuple[float, float]], maximize_first: bool = True,
                 minimize_second: bool = True) -> list[int]:
    """Indices of the non-dominated points, best second coordinate first (by ascending latency)."""
    # A point dominates another when it is at least as good on both coordinates and better on one,
    # so duplicates do not dominate each other: all copies of an optimal point are on the front.
    # Points with a NaN or infinite coordinate are never on it.
    keyed = []
    for i, (first, second) in enumerate(points):
        if not (math.isfinite(first) and math.isfinite(second)):
            continue
        keyed.append((second if minimize_second else -second, -(first if maximize_first else -first), i))
    keyed.sort()
    front: list[int] = []
    best_first = -math.inf  # best first coordinate among points with a strictly better second
    j = 0
    while j < len(keyed):
        group_end = j
        while group_end < len(keyed) and keyed[group_end][0] == keyed[j][0]:
            group_end += 1
        top = -keyed[j][1]  # the group is sorted best first coordinate first
        if top > best_first:
            front += [i for _, neg_first, i in keyed[j:group_end] if -neg_first == top]
            best_first = top
        j = group_end
    return front


def best_trials(study: optuna.Study, k: int | None = 10) -> list[FrozenTrial]:
    """The ``k`` best complete trials: by value, or for two objectives the Pareto front by latency."""
    if k is not None and k < 1:
        raise SearchError(f"study {study.study_name!r}: asked for the best {k} trials; ask for 1 or more")
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.values is not None and all(math.isfinite(v) for v in t.values)]
    directions = study.directions
    if len(directions) == 1:
        sign = -1.0 if directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1.0
        ranked = sorted(done, key=lambda t: (sign * t.values[0], t.number))
        return ranked if k is None else ranked[:k]
    if len(directions) != 2:
        raise SearchError(f"study {study.study_name!r} has {len(directions)} objectives; a search report "
                          f"reads a reward study (1) or an accuracy-latency study (2)")
    maximize_first = directions[0] == optuna.study.StudyDirection.MAXIMIZE
    minimize_second = directions[1] == optuna.study.StudyDirection.MINIMIZE
    front = [done[i] for i in pareto_front([(t.values[0], t.values[1]) for t in done],
                                           maximize_first, minimize_second)]
    if k is None or len(front) <= k:
        return front
    # Evenly spaced along the front, so a cut keeps both its fast end and its accurate end.
    if k == 1:
        return front[:1]
    return [front[round(i * (len(front) - 1) / (k - 1))] for i in range(k)]


def write_report(study: optuna.Study, out_dir: str | Path, *, k: int = 10) -> Report:
    """Write ``report.html``, the two Pareto plots and ``best_trials.csv`` into ``out_dir``."""
    out = Path(out_dir)
    counts = _state_counts(study)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise SearchError(f"study {study.study_name!r} has no finished trial yet ({_counts_text(counts)}); "
                          f"run or resume the search until a trial completes, then write the report"
                          + _last_error_hint(study))
    objective = _Objective.of(study)
    top = best_trials(study, k)
    best = _headline(study, top)
    rows = [_row(rank, t) for rank, t in enumerate(top, start=1)]
    facts = _summary(study, objective, counts, rows)

    lat_png = _plot_png(complete, "latency_ms", "latency (ms)", 1.0, objective,
                        best, target_here=objective.latency != "flops")
    macs_png = _plot_png(complete, "macs", "MACs (millions)", 1e-6, objective,
                         best, target_here=objective.latency == "flops")
    report = Report(out / "report.html", out / "pareto_latency.png", out / "pareto_macs.png",
                    out / "best_trials.csv", out / "report.json", facts)
    atomic_write_bytes(report.pareto_latency, lambda f: f.write(lat_png))
    atomic_write_bytes(report.pareto_macs, lambda f: f.write(macs_png))
    atomic_write_text(report.csv, _csv_text(rows, study))
    atomic_write_text(report.json, json.dumps(facts, indent=1, allow_nan=False) + "\n")
    atomic_write_text(report.html, _html(study, objective, counts, rows, None if best is None else best.number,
                                         lat_png, macs_png, facts["baseline"]))
    return report


def _summary(study: optuna.Study, objective: _Objective, counts: dict[str, int],
            rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The report's facts as plain data (``report.json``): the study, its objective, trial counts,
    the best trials and the comparison with random search."""
    search = (study.user_attrs.get("config") or {}).get("search") or {}
    accuracy = ((study.user_attrs.get("config") or {}).get("objective") or {}).get("accuracy")
    strategy = search.get("strategy")
    if len(study.directions) == 1 and study.directions[0] != optuna.study.StudyDirection.MAXIMIZE:
        baseline: dict[str, Any] = {"available": False, "sentence": "No comparison with random search: this study "
                                    "minimises its value, and the baseline ranks by a value to maximise."}
    else:
        baseline = compare_with_random(study, kind=objective.kind, target=objective.target, strategy=strategy,
                                       unit=objective.unit)
    return {"study": study.study_name, "space": (study.user_attrs.get("space") or {}).get("name") or search.get("space"),
            "strategy": strategy, "trials_planned": search.get("trials"), "accuracy_source": accuracy,
            "objective": {"kind": objective.kind, "latency": objective.latency, "target": objective.target,
                          "unit": objective.unit, "metric": objective.metric},
            "counts": counts, "best_trials": rows, "baseline": baseline}


def text_report(facts: dict[str, Any], k: int = 10) -> str:
    """The report as text (what ``effml search report`` prints): the best ``k`` trials and the
    comparison with random search."""
    o = facts["objective"]
    head = [f"study {facts['study']}: space {facts['space'] or '?'}, strategy {facts['strategy'] or '?'}; "
            + _counts_text(facts["counts"]),
            f"objective: {o['kind']}" + (f", target T = {o['target']:g} {o['unit']}" if o["target"] is not None else "")
            + (f"; accuracy from {facts['accuracy_source']}" if facts.get("accuracy_source") else "")]
    lines = [*head, "", f"{'#':>3} {'trial':>5} {'value':>9} {'acc %':>6} {'lat ms':>7} {'MACs M':>7}  architecture"]
    for r in facts["best_trials"][:k]:
        lines.append(f"{r['rank']:>3} {r['trial']:>5} {r['values'][0]:>9.4f} {_fmt(r['accuracy'], '.2f', 100):>6} "
                     f"{_fmt(r['latency_ms'], '.2f'):>7} {_fmt(r['macs'], '.2f', 1e-6):>7}  {r['arch']}")
    lines += ["", "against random search:", *(f"  {line}" for line in baseline_lines(facts["baseline"]))]
    return "\n".join(lines)


def baseline_lines(b: dict[str, Any]) -> list[str]:
    """The comparison with random search as lines of text: the random samples' best and spread,
    their best-of-N, what ranking by MACs picks, and the verdict."""
    pct = b.get("score", "reward") != "reward"
    show = (lambda x: "—" if x is None else f"{100 * x:.2f}%") if pct else (lambda x: "—" if x is None else f"{x:.4f}")
    out = []
    if b.get("available"):
        r, d = b["random_scores"], b["best_of_n"]
        if r is not None:
            out.append(f"random samples ({b['source']}, {b['members']} scored): best {show(b['random_best'])}, "
                       f"spread {show(r['min'])}-{show(r['max'])} (median {show(r['median'])}); score: {b['score']}")
        out.append(f"best of N = {b['n']} random samples ({d['resamples']:,} resamples, seed {d['seed']}): "
                   f"median {show(d['median'])}, 10-90% {show(d['low'])}-{show(d['high'])}")
    p = b.get("macs_pick")
    if p is not None:
        within = f"within T = {p['target']:g} {p['unit']}" if p["target"] is not None else "no target"
        reward = "" if p["reward"] is None else f", reward {p['reward']:.4f}"
        acc = "—" if p["accuracy"] is None else f"{100 * p['accuracy']:.2f}%"
        out.append(f"ranking by MACs alone picks {p['from']} trial {p['trial']}: {p['macs'] / 1e6:.2f} M MACs "
                   f"({within}), accuracy {acc}{reward}")
    return [*out, b["sentence"]]


# ---------------------------------------------------------------------------------------------
# Reading the record


@dataclass(frozen=True)
class _Objective:
    kind: str  # reward | multi (or "value" for a study without the record)
    latency: str | None
    runtime: str | None
    target: float | None  # ms, or millions of MACs when latency is flops
    alpha: float | None
    beta: float | None
    constraint: str | None
    metric: str = "top1"  # what a trial's 'accuracy' (a fraction, shown x100) is: top-1, or a detector's AP50

    @classmethod
    def of(cls, study: optuna.Study) -> _Objective:
        rec = study.user_attrs.get("objective") or {}
        cfg = (study.user_attrs.get("config") or {}).get("objective") or {}

        def get(key: str) -> Any:
            return rec[key] if rec.get(key) is not None else cfg.get(key)

        kind = get("kind") or ("multi" if len(study.directions) == 2 else "value")
        target = rec.get("target_ms") if rec.get("target_ms") is not None else get("target")
        constraint = get("constraint")
        alpha, beta = CONSTRAINTS.get(constraint or "soft", (None, None))
        if get("alpha") is not None:
            alpha = float(get("alpha"))
        if get("beta") is not None:
            beta = float(get("beta"))
        return cls(kind, get("latency"), get("runtime"), None if target is None else float(target),
                   alpha, beta, constraint, get("metric") or "top1")

    @property
    def accuracy_label(self) -> str:
        """'accuracy', or the detection metric the trials were scored on."""
        return "accuracy" if self.metric == "top1" else self.metric

    @property
    def unit(self) -> str:
        return "M MACs" if self.latency == "flops" else "ms"


def _state_counts(study: optuna.Study) -> dict[str, int]:
    counts = {"complete": 0, "failed": 0, "pruned": 0, "running": 0, "waiting": 0}
    names = {TrialState.COMPLETE: "complete", TrialState.FAIL: "failed", TrialState.PRUNED: "pruned",
             TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}
    for t in study.get_trials(deepcopy=False):
        counts[names[t.state]] += 1
    return counts


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {state}" for state, n in counts.items() if n or state != "waiting")


def _last_error_hint(study: optuna.Study) -> str:
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    errors = [t.user_attrs["error"] for t in failed if t.user_attrs.get("error")]
    return f"; the last failed trial says: {_short(str(errors[-1]))}" if errors else ""


def _metric(trial: FrozenTrial, key: str) -> float | None:
    value = (trial.user_attrs.get("metrics") or {}).get(key)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _arch(trial: FrozenTrial) -> str:
    """The trial's spec as block strings, stages separated by ' | '."""
    data = trial.user_attrs.get("spec")
    if data is None:
        return "(no spec recorded)"
    try:
        spec = spec_from_dict(data, f"trial {trial.number}")
    except SpecError as err:
        return f"(invalid spec: {_short(str(err))})"
    stages = getattr(spec, "stages", None)
    backbone = getattr(getattr(spec, "backbone", None), "stages", None)
    if stages is None and backbone is not None:  # a searched detector: its backbone's blocks
        return f"{data.get('kind')} on " + " | ".join(" ".join(stage) for stage in format_arch(backbone))
    if stages is None:  # a SpineNet spec has no block rows to print
        return f"({data.get('kind', type(spec).__name__)} spec)"
    return " | ".join(" ".join(stage) for stage in format_arch(stages))


def _row(rank: int, trial: FrozenTrial) -> dict[str, Any]:
    return {"rank": rank, "trial": trial.number, "values": list(trial.values),
            "accuracy": _metric(trial, "accuracy"), "latency_ms": _metric(trial, "latency_ms"),
            "macs": _metric(trial, "macs"), "params": _metric(trial, "params"), "arch": _arch(trial),
            "overrides": list(trial.user_attrs.get("overrides") or [])}


def _headline(study: optuna.Study, top: list[FrozenTrial]) -> FrozenTrial | None:
    """The trial the plots mark as best: the top value; for two objectives the most accurate trial
    on the front within the target (as ``choose_trial`` picks it)."""
    if not top:
        return None
    return recommended_trial(study)


def _short(text: str, limit: int = _MAX_ERROR_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------------------------------------
# Plots


def _plot_png(trials: list[FrozenTrial], x_key: str, x_label: str, x_scale: float, objective: _Objective,
              best: FrozenTrial | None, *, target_here: bool) -> bytes:
    """Accuracy (%) against one cost of every complete trial, the Pareto front as a step line."""
    pts = [(t, _metric(t, "accuracy"), _metric(t, x_key)) for t in trials]
    pts = [(t, acc * 100, x * x_scale) for t, acc, x in pts if acc is not None and x is not None]
    # No pyplot: a Figure with its own Agg canvas leaves the caller's backend and state alone.
    fig = Figure(figsize=(6.4, 4.2), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_xlabel(x_label)
    ax.set_ylabel(f"{objective.accuracy_label} (%)")
    ax.grid(True, color="#e5e7eb", linewidth=0.8)
    ax.set_axisbelow(True)
    if not pts:
        why = "no trial recorded accuracy and " + ("latency in ms" if x_key == "latency_ms" else "MACs")
        if x_key == "latency_ms" and objective.latency == "flops":
            why += "\n(this study scores MACs: objective latency = flops)"
        ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, color="#57606a")
        ax.set_xticks([])
        ax.set_yticks([])
    else:
        xs = [x for _, _, x in pts]
        ys = [y for _, y, _ in pts]
        ax.scatter(xs, ys, s=22, color=TRIAL_COLOR, alpha=0.55, linewidths=0, label=f"trials ({len(pts)})")
        front = sorted(pareto_front([(y, x) for x, y in zip(xs, ys)]), key=lambda i: (xs[i], -ys[i]))
        fx, fy = [xs[i] for i in front], [ys[i] for i in front]
        # The front as the best accuracy reachable at each cost: flat until the next front point.
        ax.step(fx, fy, where="post", color=FRONT_COLOR, linewidth=1.8, zorder=3)
        ax.scatter(fx, fy, s=46, color=FRONT_COLOR, edgecolors="white", linewidths=0.8, zorder=4,
                   label=f"Pareto front ({len(front)})")
        if target_here and objective.target is not None:
            ax.axvline(objective.target, color=TARGET_COLOR, linestyle="--", linewidth=1.3, zorder=2,
                       label=f"target T = {objective.target:g} {objective.unit}")
        marked = [(x, y) for t, y, x in pts if best is not None and t.number == best.number]
        if marked:
            bx, by = marked[0]
            ax.scatter([bx], [by], s=190, marker="*", color=BEST_COLOR, edgecolors="white", linewidths=0.8,
                       zorder=5, label="best")
            left = bx > (min(xs) + max(xs)) / 2
            low = by > (min(ys) + max(ys)) / 2
            unit = "ms" if x_key == "latency_ms" else "M MACs"
            # The label goes towards the middle of the plot, so it stays inside the axes.
            ax.annotate(f"best: trial {best.number}\n{by:.1f}% · {bx:.3g} {unit}", (bx, by),
                        xytext=(-14 if left else 14, -30 if low else 22), textcoords="offset points",
                        ha="right" if left else "left", va="top" if low else "bottom", fontsize=8.5,
                        color=BEST_COLOR, zorder=6,
                        bbox={"boxstyle": "round,pad=0.3", "fc": "white", "ec": BEST_COLOR, "lw": 0.8},
                        arrowprops={"arrowstyle": "-", "color": BEST_COLOR, "lw": 0.8})
        ax.legend(loc="lower right", fontsize=8, framealpha=0.9)
    ax.set_title(f"{objective.accuracy_label} vs {x_label.split(' (')[0]}", fontsize=11)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# The table as CSV and the page


def _value_header(study: optuna.Study, objective: _Objective) -> list[str]:
    if len(study.directions) == 2:
        return ["objective 1", "objective 2"]
    return ["reward" if objective.kind == "reward" else "value"]


def _csv_text(rows: list[dict[str, Any]], study: optuna.Study) -> str:
    objective = _Objective.of(study)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    value_cols = [h.replace(" ", "_") for h in _value_header(study, objective)]
    writer.writerow(["rank", "trial", *value_cols, "accuracy", "latency_ms", "macs", "params", "arch",
                     "overrides"])
    for r in rows:
        writer.writerow([r["rank"], r["trial"], *(repr(float(v)) for v in r["values"]),
                         *("" if r[key] is None else _plain(r[key])
                           for key in ("accuracy", "latency_ms", "macs", "params")),
                         r["arch"], json.dumps(r["overrides"])])
    return buf.getvalue()


def _plain(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _fmt(value: float | None, spec: str, scale: float = 1.0) -> str:
    return "—" if value is None else format(value * scale, spec)


def _objective_html(objective: _Objective, study: optuna.Study) -> str:
    e = html.escape
    latency = {"measured": "measured on the search machine", "table": "predicted from a latency table",
               "flops": "MACs in millions (a FLOPs proxy)"}.get(objective.latency or "", objective.latency or "?")
    if objective.runtime and objective.latency != "flops":
        latency += f" ({objective.runtime})"
    if objective.kind == "reward":
        t = "?" if objective.target is None else f"{objective.target:g} {objective.unit}"
        if objective.alpha is None or objective.beta is None:
            w = "w from the search config"
        elif objective.alpha == objective.beta:
            w = f"w = {objective.alpha:g}"
        else:
            w = f"w = α = {objective.alpha:g} if LAT ≤ T, else β = {objective.beta:g}"
        if objective.constraint:
            w += f" ({objective.constraint} constraint)"
        formula = (f"<b>MnasNet reward</b> = ACC × (LAT / T)<sup>w</sup>, "
                   f"T = {e(t)}, {e(w)}")
    elif len(study.directions) == 2:
        formula = "<b>multi-objective</b>: maximise accuracy, minimise latency (a Pareto front)"
        if objective.target is not None:
            formula += e(f"; target T = {objective.target:g} {objective.unit} marks the best trial")
    else:
        direction = study.directions[0].name.lower()
        formula = f"<b>single objective</b>: {e(direction)} the trial value"
    return f"{formula}<br>latency: {e(latency)}"


def _values_shown(rows: list[dict[str, Any]], study: optuna.Study) -> bool:
    """Whether the table needs value columns: not for two objectives that are the accuracy and
    latency columns already (the record's accuracy-latency study)."""
    if len(study.directions) == 1:
        return True
    return not all(r["accuracy"] is not None and r["latency_ms"] is not None
                   and math.isclose(r["values"][0], r["accuracy"]) and math.isclose(r["values"][1], r["latency_ms"])
                   for r in rows)


def _table_html(rows: list[dict[str, Any]], study: optuna.Study, objective: _Objective, best: int | None) -> str:
    e = html.escape
    shown = _values_shown(rows, study)
    heads = ["#", "trial", *(_value_header(study, objective) if shown else []), f"{objective.accuracy_label} %", "latency ms",
             "MACs M", "params M"]
    out = ["<div class=\"scroll\"><table class=\"best\"><thead><tr>", *(f"<th>{e(h)}</th>" for h in heads),
           "<th class=\"arch\">architecture</th></tr></thead><tbody>"]
    # Rewards lie in [0, 1]: fixed decimals keep the column aligned.
    spec = ".4f" if objective.kind == "reward" else ".4g"
    for r in rows:
        values = [format(v, spec) for v in r["values"]] if shown else []
        cells = [str(r["rank"]), str(r["trial"]), *values, _fmt(r["accuracy"], ".2f", 100),
                 _fmt(r["latency_ms"], ".2f"), _fmt(r["macs"], ".1f", 1e-6), _fmt(r["params"], ".2f", 1e-6)]
        title = " ".join(r["overrides"])
        out.append(("<tr class=\"best\">" if r["trial"] == best else "<tr>")
                   + "".join(f"<td>{e(c)}</td>" for c in cells)
                   + f"<td class=\"arch\"><code title=\"{e(title)}\">{e(r['arch'])}</code></td></tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _errors_html(study: optuna.Study) -> str:
    e = html.escape
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    if not failed:
        return ""
    items = [f"<li><b>trial {t.number}</b>: {e(_short(str(t.user_attrs.get('error') or 'no error recorded')))}</li>"
             for t in failed[-_MAX_ERRORS:]]
    more = len(failed) - len(items)
    note = f"<p class=\"muted\">and {more} earlier failed trials</p>" if more > 0 else ""
    return f"<h2>Failed trials</h2><ul class=\"errors\">{''.join(items)}</ul>{note}"


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Arial,sans-serif;color:#1f2328;
 margin:0;background:#fff;font-size:14px;line-height:1.45}
main{max-width:1240px;margin:0 auto;padding:20px 24px 32px}
h1{font-size:22px;margin:0 0 2px} h2{font-size:16px;margin:22px 0 8px}
.muted{color:#57606a} .objective{margin:8px 0 12px}
.counts{display:flex;gap:10px;flex-wrap:wrap;margin:10px 0}
.count{border:1px solid #d0d7de;border-radius:6px;padding:6px 14px;min-width:84px}
.count b{display:block;font-size:20px} .count span{color:#57606a;font-size:12px}
.count.failed b{color:#c92a2a} .count.complete b{color:#2b8a3e}
table{border-collapse:collapse;width:100%;font-size:12.5px}
th,td{padding:4px 8px;border-bottom:1px solid #d8dee4;text-align:right;vertical-align:top;white-space:nowrap}
th{background:#f6f8fa;font-weight:600} tr.best{background:#fff4e6}
td.arch,th.arch{text-align:left;white-space:normal;width:55%;min-width:360px}
.scroll{overflow-x:auto}
code{font-family:ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:11px;color:#24292f;
 word-break:break-word}
.plots{display:flex;flex-wrap:wrap;gap:16px}
figure{margin:0;flex:1 1 540px;min-width:0}
figure img{width:100%;height:auto;border:1px solid #d0d7de;border-radius:6px}
figcaption{font-size:12px;color:#57606a;margin-top:4px}
ul.errors{margin:0;padding-left:20px;font-size:12.5px} ul.errors li{margin:2px 0}
p.verdict{font-weight:600;margin:4px 0} ul.baseline{margin:0;padding-left:20px;font-size:12.5px}
footer{margin-top:24px;font-size:11.5px;color:#8c959f}
"""


def _html(study: optuna.Study, objective: _Objective, counts: dict[str, int], rows: list[dict[str, Any]],
          best: int | None, lat_png: bytes, macs_png: bytes, baseline: dict[str, Any]) -> str:
    e = html.escape
    name = study.study_name
    config = (study.user_attrs.get("config") or {}).get("search") or {}
    space = study.user_attrs.get("space") or {}
    facts = []
    if space.get("name") or config.get("space"):
        facts.append(f"space {space.get('name') or config.get('space')}")
    if config.get("strategy"):
        facts.append(f"strategy {config['strategy']}")
    if config.get("trials"):
        facts.append(f"{config['trials']} trials planned")
    count_html = "".join(f"<div class=\"count {state}\"><b>{n}</b><span>{state}</span></div>"
                         for state, n in counts.items() if n or state != "waiting")
    if len(study.directions) == 2:
        table_note = "the Pareto-optimal trials (accuracy vs latency), fastest first"
        if len(rows) < len(best_trials(study, k=None)):
            table_note += ", evenly spaced along the front"
    else:
        table_note = "ranked by " + ("reward" if objective.kind == "reward" else "value")
    table_note += ("; accuracy is held-out top-1" if objective.metric == "top1"
                   else f"; {objective.metric} is COCO box {objective.metric} of the detector on held-out training images")
    if best is not None:
        table_note += "; highlighted: the trial the plots mark best"
    # Nothing may load from outside the file; the policy makes a browser refuse it if anything tries.
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    lat_uri, macs_uri = (f"data:image/png;base64,{base64.b64encode(png).decode()}" for png in (lat_png, macs_png))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(f"Search report: {name}")}</title>
<style>{_CSS}</style></head>
<body><main>
<h1>Search report: {e(name)}</h1>
<div class="muted">{e(" · ".join(facts))}</div>
<div class="objective">{_objective_html(objective, study)}</div>
<div class="counts">{count_html}</div>
<h2>Best trials</h2>
<p class="muted">{e(table_note)}.</p>
{_table_html(rows, study, objective, best)}
<h2>Against random search</h2>
<p class="verdict">{e(baseline["sentence"])}</p>
<ul class="baseline">{"".join(f"<li>{e(line)}</li>" for line in baseline_lines(baseline)[:-1])}</ul>
<h2>Pareto plots</h2>
<div class="plots">
<figure><img alt="accuracy vs latency (ms) of every complete trial" src="{lat_uri}">
<figcaption>Every complete trial; the Pareto front (orange) is the best accuracy reachable at each latency.</figcaption></figure>
<figure><img alt="accuracy vs MACs (millions) of every complete trial" src="{macs_uri}">
<figcaption>The same trials against MACs (multiply-accumulates), the hardware-independent cost.</figcaption></figure>
</div>
{_errors_html(study)}
<footer>Written by effml.search.study.report from study {e(repr(name))}.</footer>
</main></body></html>
"""
