"""``effml autohas``: search architectures and training hyper-parameters together (AutoHAS)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from effml.cli._common import echo, resumable_config, warn


def autohas(
    args: Annotated[list[str] | None, typer.Argument(
        help="An AutoHAS YAML (a training config with an `autohas` section), then section.key=value "
             "overrides.", show_default=False)] = None,
    resume: Annotated[Path | None, typer.Option(
        "--resume", help="Continue the AutoHAS run in this directory exactly where it stopped.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines.")] = False,
) -> None:
    """AutoHAS (arXiv 2006.03656): one training run with shared weights and a REINFORCE controller
    picks the architecture and the hyper-parameters; writes chosen.yaml for `effml train`."""
    from effml.search.oneshot.autohas import load_autohas_config, run_autohas

    cfg = resumable_config(args, resume, load_autohas_config, "AutoHAS", quiet=quiet)
    result = run_autohas(cfg, resume=resume is not None, quiet=quiet)
    arch = " ".join(f"{b.kind}_r{b.repeats}_k{b.kernel_size[0]}_e{b.expand_ratio:g}_c{b.out_channels}"
                    for stage in result.spec.stages for b in stage)
    hyper = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.hyper.items())
    last = result.history[-1] if result.history else None
    if not result.history:
        warn("the controller was never updated (0 controller updates: the run was shorter than the "
             "controller's warm-up), so the choice below is its starting policy, not a search result; train "
             "longer (train.epochs) or shorten autohas.warmup_epochs")
    echo(f"done: {result.run.global_step} steps, {len(result.history)} controller updates, "
         f"{result.cpu_s / 60:.1f} CPU min"
         + (f"; policy entropy {last['entropy']:.2f} of uniform" if last else "") + "\n"
         f"  chosen architecture: {arch}\n"
         f"  chosen hyper-parameters: {hyper}\n"
         f"  wrote {result.run_dir}/autohas.json, autohas.png, chosen_model.json, chosen.yaml\n"
         f"  next: effml train {result.config_path}")
