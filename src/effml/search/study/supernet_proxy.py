"""A trained supernet as the evaluator of a search (``objective.accuracy: supernet``).

A proxy training costs a CPU-minute or two per sample, so a study sees a few dozen networks. A
trained supernet holds weights for every member of its space already: a BigNAS one (Yu et al.,
arXiv 2003.11142; ``effml supernet train``) or the one a TuNAS search trained (arXiv 2008.06120;
``search.strategy: tunas``, op choices included). So here a sample is scored with no training,
once-for-all style (Cai et al., arXiv 1908.09791): its child is sliced out, its BatchNorm
statistics re-estimated on the supernet run's calibration batches (BigNAS section 3.2) and its
top-1 measured on that run's held-out training images (``data.holdout``: never val). Cost,
latency and reward are the proxy's (``proxy.evaluate_sample``); only the accuracy comes from here.

Work that does not change a score is done once per process (the search's driver and each
worker): the supernet is loaded and the calibration batches drawn once; they and the held-out
images are resized once per resolution of the space (the same interpolation ``AtResolution``
applies per batch) and laid out channels-last; held-out images go through in large batches;
scoring runs under ``torch.inference_mode``; a child sampled again is not scored again.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from effml.errors import EffmlError, SearchError
from effml.models.fuse import fuse_for_inference
from effml.search.oneshot.bignas import TrainedSupernet
from effml.search.oneshot.supernet import resize_to
from effml.search.oneshot.tunas import load_trained_supernet
from effml.search.spaces.search_space import Sample, SearchSpace
from effml.search.study.config import SearchConfig
from effml.search.study.detection_proxy import score
from effml.search.study.proxy import Accuracy, Reporter
from effml.spec import NetworkSpec
from effml.train.trainer import preserved_global_state

# Held-out images per forward pass: in eval mode the batch size changes no output, and a few large
# batches cost less than many of the supernet run's training batch size.
EVAL_BATCH = 256
# Resized copies of the calibration batches and the held-out images are kept per resolution up to
# this size; beyond it (large images, a large held-out part) they are resized per candidate.
CACHE_BYTES = 512 * 2**20
SCORES_KEPT = 100_000  # children whose score a process remembers (a float each)


class SupernetAccuracy:
    """Scores samples as children of ``trained``: held-out top-1 after BN calibration. An
    ``AccuracySource`` for ``evaluate_sample``."""

    def __init__(self, trained: TrainedSupernet, holdout_images: int | None = None,
                 calibration_batches: int | None = None, fold_bn: bool = True) -> None:
        self.trained = trained
        self.fold_bn = fold_bn
        self.holdout_images = holdout_images  # the first N held-out images (None: all)
        self.calibration_batches = calibration_batches or trained.calibration
        self._calibration: list[torch.Tensor] | None = None
        self._holdout: tuple[torch.Tensor, torch.Tensor] | None = None
        self._at: dict[int, tuple[list[torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]] | None]] = {}
        self._cached = 0
        self._scores: dict[NetworkSpec, float] = {}  # a child's score is fixed: a strategy that samples it again reads it

    @property
    def space(self) -> SearchSpace:
        """The supernet's space: the samples it can score are its members."""
        return self.trained.supernet.space

    def top1(self, spec: NetworkSpec) -> float:
        """The held-out top-1 (a fraction) of child ``spec`` with the shared weights, BN calibrated."""
        trained, t = self.trained, self.trained.trainer
        spec = trained.supernet.child_spec(spec)
        if spec in self._scores:
            return self._scores[spec]
        calibration, holdout = self._inputs(spec.resolution)
        with torch.inference_mode():
            child = self._prepared(trained.calibrated(spec, calibration))
            if holdout is None:  # too large to keep resized: the run's own loader, resized per batch
                metrics = trained.evaluate(child, spec.resolution, "holdout")
            else:
                metrics = t.task.evaluate(trained.cfg, child, holdout, t.device, t.dataset("holdout"))
        if len(self._scores) >= SCORES_KEPT:
            self._scores.clear()
        self._scores[spec] = top1 = score(metrics, "top1")
        return top1

    def _prepared(self, child: torch.nn.Module) -> torch.nn.Module:
        """The calibrated child as it is measured: its BatchNorms folded into their convs when
        ``fold_bn`` (the same outputs up to float rounding, 5-27% less time than a BN pass each)."""
        return fuse_for_inference(child) if self.fold_bn else child

    def __call__(self, cfg: SearchConfig, sample: Sample, network: Any, seed: int,
                 report: Reporter | None = None) -> Accuracy:
        """The sample's accuracy: its child's held-out top-1 (nothing trains: ``seed`` and the
        pruner's ``report`` have nothing to act on)."""
        return Accuracy(self.top1(sample.spec))

    def _inputs(self, resolution: int) -> tuple[list[torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]] | None]:
        """The calibration batches and the held-out batches (None: too large to keep) at ``resolution``."""
        if resolution in self._at:
            return self._at[resolution]
        if self._calibration is None:
            self._calibration = self.trained.trainer.calibration_batches(self.calibration_batches)
            self._holdout = self._load_holdout()
        calibration = [_nhwc(resize_to(b, resolution)) for b in self._calibration]
        holdout = None
        if self._holdout is not None:
            images, labels = self._holdout
            images = _nhwc(resize_to(images, resolution))
            holdout = [(images[i:i + EVAL_BATCH], labels[i:i + EVAL_BATCH]) for i in range(0, len(labels), EVAL_BATCH)]
        size = sum(b.nbytes for b in calibration) + (0 if holdout is None else images.nbytes)
        if self._cached + size <= CACHE_BYTES:
            self._at[resolution] = (calibration, holdout)
            self._cached += size
        return calibration, holdout

    def _load_holdout(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The held-out images (eval transform, at the run's input size; the first ``holdout_images``
        when set) and labels in two tensors, or None when all of them would not fit the cache."""
        t = self.trained.trainer
        size = self.trained.cfg.data.image_size
        wanted = self.holdout_images
        if wanted is None and len(t.dataset("holdout")) * 3 * size * size * 4 > CACHE_BYTES // 2:
            return None
        images, labels, kept = [], [], 0
        for batch in t.eval_batches("holdout"):
            images.append(batch[0])
            labels.append(batch[1])
            kept += len(batch[1])
            if wanted is not None and kept >= wanted:
                break
        return torch.cat(images)[:wanted].to(t.device), torch.cat(labels)[:wanted].to(t.device)


def _nhwc(images: torch.Tensor) -> torch.Tensor:
    """Images in channels-last order: the child's convolutions follow its input's memory format,
    and on CPU its depthwise convolutions and BatchNorms run about a third faster so. Logits then
    differ in the last bits only (measured: at most 3e-4 on logits up to ~75; no top-1 changed
    over 40 random children x 144 held-out digits)."""
    return images.contiguous(memory_format=torch.channels_last)


# This process's scorer (the driver's and each worker's), built at first use: loading the supernet
# and drawing its calibration batches takes a second or more, scoring a child a fraction of that.
# Keyed by the run directory, its run.json's time (a retrained run is loaded anew) and the scoring
# settings (objective.holdout_images, objective.calibration_batches).
_LOADED: dict[tuple[Any, ...], SupernetAccuracy] = {}


def supernet_accuracy(cfg: SearchConfig) -> SupernetAccuracy:
    """The scorer of ``objective.supernet`` (loaded once per process)."""
    path = cfg.objective.supernet
    if not path:
        raise SearchError("objective.accuracy=supernet needs objective.supernet: the run directory that "
                          "`effml supernet train` or a TuNAS search (its proxy.run.dir) wrote (e.g. "
                          "objective.supernet=runs/bignas_digits)")
    run_dir = Path(path).absolute()
    scoring = (cfg.objective.holdout_images, cfg.objective.calibration_batches)
    try:
        key = (str(run_dir), os.stat(run_dir / "run.json").st_mtime_ns, *scoring)
    except OSError:
        key = (str(run_dir), 0, *scoring)  # loading says what is missing
    if key not in _LOADED:
        try:
            with preserved_global_state():  # the run's Trainer sets its own thread count and seeds
                trained = load_trained_supernet(run_dir)
        except SearchError:
            raise
        except EffmlError as err:
            raise SearchError(f"objective.supernet={path}: {err}") from None
        _LOADED.clear()
        _LOADED[key] = SupernetAccuracy(trained, *scoring)
    return _LOADED[key]


def check_supernet(cfg: SearchConfig, space: SearchSpace) -> None:
    """Before any trial: ``objective.accuracy=supernet`` can score the samples of ``space``: a
    classification search of architectures only, over the very space the supernet was trained on."""
    o, s = cfg.objective, cfg.search
    if s.detector is not None:
        raise SearchError(f"search.detector={s.detector} searches detectors, but objective.accuracy=supernet "
                          f"scores classifiers as children of a BigNAS supernet; set search.detector=null, or "
                          f"objective.accuracy=holdout to train each detector (the proxy)")
    if o.metric not in (None, "top1"):
        raise SearchError(f"objective.metric={o.metric}: objective.accuracy=supernet scores held-out top-1; "
                          f"set objective.metric=top1 (or leave it unset)")
    if space.hyper:
        raise SearchError(f"search.space {space.name!r} has hyper-parameter decisions "
                          f"{[h.key for h in space.hyper]}; objective.accuracy=supernet trains nothing, so they "
                          f"would change no score: search an architecture-only space, or use "
                          f"objective.accuracy=holdout (a proxy training per sample)")
    if s.pruner != "none":
        raise SearchError(f"search.pruner={s.pruner} stops trainings early, but objective.accuracy=supernet "
                          f"trains nothing; set search.pruner=none")
    scorer = supernet_accuracy(cfg)
    mismatch = _space_mismatch(space, scorer.space)
    if mismatch:
        run, theirs = scorer.trained, scorer.space.name
        raise SearchError(
            f"search.space {space.name!r} is not the space of the supernet objective.supernet={o.supernet} "
            f"(its space: {theirs!r} at {run.cfg.data.image_size} px, {len(run.info['classes'])} classes): "
            f"{mismatch}; set search.space={theirs} (and the rest of that run's space) and leave "
            f"search.resolution unset (the supernet's)")


def _space_mismatch(study: SearchSpace, supernet: SearchSpace) -> str:
    """How the study's space differs from the supernet's ('' when it does not)."""
    a, b = study.to_dict(), supernet.to_dict()
    if a["name"] != b["name"]:
        return f"the names differ ({a['name']!r} vs {b['name']!r})"
    theirs = {(c.get("at"), c["field"]): c for c in b["choices"]}
    for c in a["choices"]:
        other = theirs.get((c.get("at"), c["field"]))
        where = f"{c['at']}.{c['field']}" if c.get("at") else c["field"]
        if other is None:
            return f"the supernet has no choice {where}"
        if other != c:
            return f"choice {where} has options {c['options']} here but {other['options']} in the supernet"
    if len(a["choices"]) != len(b["choices"]):
        ours = {(c.get("at"), c["field"]) for c in a["choices"]}
        extra = [f"{at}.{f}" if at else f for at, f in theirs if (at, f) not in ours]
        return f"the supernet also chooses {extra}"
    if a["base"] != b["base"]:
        keys = sorted(k for k in {*a["base"], *b["base"]} if a["base"].get(k) != b["base"].get(k))
        return f"the base networks differ in {keys}"
    return ""
