"""``effml search``: run or resume an architecture search, report it, export its best network,
build a latency table, show a space."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import click
import typer
from typer.core import TyperGroup

from effml.cli._common import echo


class _SearchGroup(TyperGroup):
    """``effml search CONFIG ...`` runs a search; ``effml search report|export|...`` the others."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


search_app = typer.Typer(
    cls=_SearchGroup, no_args_is_help=True, add_completion=False,
    help="Architecture search: `effml search CONFIG [key=value ...] [--resume]` runs one; "
         "report, export, latency-table and show work on its results and spaces.")

StudyOpt = Annotated[str | None, typer.Option(
    "--study", help="The study's name in the storage (default: its only study).")]


@search_app.command("run")
def run(
    args: Annotated[list[str], typer.Argument(
        help="A search YAML config, then section.key=value overrides (search.trials=8 proxy.train.epochs=2).",
        show_default=False)],
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue the study after a crash or kill: finished trials are kept, "
                         "trials that were running are sampled anew.")] = False,
) -> None:
    """Run a search (the config's `search.trials` finished trials) and print its best trial."""
    from effml.search.study.config import build_space, load_search_config
    from effml.search.study.runner import run_search
    from effml.search.study.storage import storage_url

    config_file, overrides = args[0], args[1:]
    bad = [a for a in overrides if "=" not in a]
    if "=" in config_file or bad:
        raise typer.BadParameter("give the search config file first, then section.key=value overrides")
    cfg = load_search_config(config_file, overrides)
    space = build_space(cfg)
    echo(f"{space.describe().splitlines()[0]}; strategy {cfg.search.strategy}, {cfg.search.trials} trials, "
         f"{cfg.search.workers} worker(s) x {cfg.search.threads} thread(s) ({cfg.search.runner}); "
         f"study {cfg.search.study!r} in {storage_url(cfg.search.storage)}")
    db = cfg.search.storage
    if cfg.search.strategy == "tunas":  # one weight-sharing search, recorded as one trial
        from effml.search.oneshot.tunas import run_tunas

        run_tunas(cfg, space, resume=resume, echo=echo)
    else:
        result = run_search(cfg, space, resume=resume, echo=echo)
        baseline = "" if result.baseline is None else (
            f"; random baseline in study {result.baseline.study_name!r} (the report compares the two)")
        echo(f"done: {result.finished} finished trial(s), {result.failed} failed in this run{baseline}.")
    echo(f"Next:\n  effml search report {db} --study {cfg.search.study}\n"
         f"  effml search export {db} --study {cfg.search.study} -o best.json")


@search_app.command("report")
def report(
    storage: Annotated[str, typer.Argument(help="The study storage: a SQLite file or a database URL.")],
    study: StudyOpt = None,
    out_dir: Annotated[Path | None, typer.Option(
        "--out-dir", "-o", help="Where report.html, report.json, the Pareto PNGs and the CSV go "
                                "(default: <storage folder>/report).")] = None,
    top: Annotated[int, typer.Option(min=1, help="Trials in the table.")] = 10,
) -> None:
    """Print and write the study's report: the best trials, the comparison with random search of the
    same size, Pareto fronts (PNG), report.json and one offline HTML page."""
    from effml.search.study.report import text_report, write_report
    from effml.search.study.storage import load_study

    s = load_study(storage, study)
    out = out_dir or (Path(storage).parent / "report" if "://" not in storage else Path("report"))
    written = write_report(s, out, k=top)
    echo(text_report(written.summary, top))
    echo(f"wrote {written.html}, {written.pareto_latency.name}, {written.pareto_macs.name}, {written.csv.name}, "
         f"{written.json.name}")


@search_app.command("export")
def export(
    storage: Annotated[str, typer.Argument(help="The study storage: a SQLite file or a database URL.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The spec JSON to write.")] = Path("searched.json"),
    study: StudyOpt = None,
    trial: Annotated[int | None, typer.Option(
        "--trial", help="Trial number (default: the best: highest reward; for accuracy-vs-latency "
                        "studies the most accurate Pareto trial within the target).")] = None,
) -> None:
    """Write a trial's network as a spec JSON that `effml train model.name=...`, `effml bench` and
    `effml export` take."""
    from effml.files import atomic_write_text
    from effml.search.study.storage import choose_trial, load_study
    from effml.zoo.kinds import spec_to_json

    chosen = choose_trial(load_study(storage, study), trial)
    atomic_write_text(out, spec_to_json(chosen.spec) + "\n")
    m = chosen.metrics
    what = ", ".join(f"{k} {_fmt(k, v)}" for k, v in m.items() if v is not None)
    echo(f"wrote {out}: trial {chosen.number} ({what})")


@search_app.command("latency-table")
def latency_table(
    space: Annotated[str, typer.Argument(help="A named space (mnasnet, mobiledet, ...) or a space file.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The table JSON to write.")] = Path("latency_table.json"),
    resolution: Annotated[int, typer.Option(min=8, help="Input size of the networks.")] = 224,
    num_classes: Annotated[int, typer.Option(min=1, help="Classifier width.")] = 1000,
    runtime: Annotated[str, typer.Option(
        help="eager, onnxruntime, int8 (ONNX Runtime int8, as `effml export --int8` writes it) or openvino.")] = "eager",
    threads: Annotated[int, typer.Option(min=1, help="Threads the networks run on.")] = 1,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 1,
    calibrate: Annotated[int, typer.Option(min=0, help="Random members that fit the per-network overhead.")] = 10,
    validate: Annotated[int, typer.Option(min=0, help="Other random members measured end to end to report "
                                                      "the table's error.")] = 30,
    seed: Annotated[int, typer.Option(help="Seed of the random members.")] = 0,
) -> None:
    """Measure every distinct layer the space can build on this machine, fit the overhead, and
    report the prediction error on random members."""
    import random

    from effml.measure.latency_table import build_latency_table
    from effml.search.spaces.catalog import space_for

    sp = space_for(space, num_classes, resolution)
    if not sp.layered:
        from effml.errors import SearchError

        raise SearchError(f"space {space}: a latency table predicts classifiers from their layers; its members are "
                          f"detectors (search with objective.latency=measured or flops)")
    members = _distinct_members(sp, calibrate + validate, random.Random(seed))
    if len(members) < calibrate + validate:
        echo(f"note: the space has {len(members)} distinct members; {min(calibrate, len(members))} calibrate, "
             f"{max(0, len(members) - calibrate)} validate")
    layers = list(sp.layer_variants())
    echo(f"space {sp.name}: {len(layers)} distinct layers; {calibrate} calibration + {validate} validation "
         f"networks ({runtime}, {threads} thread(s), batch {batch_size})")
    table = build_latency_table(layers, runtime=runtime, threads=threads, batch_size=batch_size,
                                calibration_specs=members[:calibrate], validation_specs=members[calibrate:],
                                progress=lambda done, total, what="": _progress(done, total, what))
    table.save(out)
    v = table.validation
    err = (f"; predicted vs measured on {v.n} networks: median |error| {v.median_abs_pct:.1f}%, "
           f"p90 {v.p90_abs_pct:.1f}%, max {v.max_abs_pct:.1f}%") if v else ""
    echo(f"wrote {out}: {len(table.entries)} entries, overhead {table.overhead_ms:.3f} ms{err}")


@search_app.command("show")
def show(
    space: Annotated[str, typer.Argument(help="A named space (mnasnet, mobiledet, mobiledet_ibn, mixnet_kernels, "
                                              "efficientnet_compound, bignas, autohas) or a space file.")],
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Also save the space as JSON or YAML (by suffix), to edit and search.")] = None,
) -> None:
    """Print a space: its decisions, options and size; its largest and smallest members."""
    import json

    import yaml

    from effml.errors import SearchError
    from effml.files import atomic_write_text
    from effml.search.spaces.catalog import load_space, named_space
    from effml.spec.notation import format_arch
    from effml.spec.plan import plan

    sp = load_space(space) if space.endswith((".json", ".yaml", ".yml")) else named_space(space)
    echo(sp.describe())
    if not sp.layered:  # SpineNet's block tables: every member at one MACs budget
        if out is not None:
            raise SearchError(f"space {space} is built in (search.space: {space}); only a space of choices over a "
                              f"NetworkSpec is written to a file")
        return
    for label, member in (("largest", sp.largest()), ("smallest", sp.smallest())):
        echo(f"{label}: {plan(member.spec).macs() / 1e6:.1f} MMACs at {member.spec.resolution} px: "
             f"{' '.join(b for stage in format_arch(member.spec.stages) for b in stage)}")
    if out is not None:
        data = sp.to_dict()
        text = yaml.safe_dump(data, sort_keys=False) if out.suffix in (".yaml", ".yml") else json.dumps(data, indent=2)
        atomic_write_text(out, text + ("" if text.endswith("\n") else "\n"))
        echo(f"wrote {out}")


def _distinct_members(space: Any, n: int, rng: Any) -> list[Any]:
    """Up to ``n`` different random members (calibration and validation networks must differ)."""
    found: dict[Any, None] = {}
    for _ in range(50 * max(n, 1)):
        if len(found) == n:
            break
        found.setdefault(space.random_member(rng).spec)
    return list(found)


def _progress(done: int, total: int, what: str = "") -> None:
    if done == total or done % max(1, total // 10) == 0:
        echo(f"  measured {done}/{total} {what}".rstrip())


def _fmt(key: str, value: Any) -> str:
    if key in ("accuracy", "val_accuracy"):
        return f"{100 * value:.1f}%"
    if key == "macs":
        return f"{value / 1e6:.1f}M"
    if key == "params":
        return f"{value / 1e6:.2f}M"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
