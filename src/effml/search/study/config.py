"""The search configuration: what ``effml search CONFIG [key=value ...]`` reads.

Three sections: ``search`` (space, strategy, trials, storage, runner), ``objective`` (what a
trial is scored on) and ``proxy`` (the short training each trial gets: the whole ``effml train``
schema, so a proxy is configured exactly as a training run). Validated as the training config is
(pydantic, one-line errors naming the key); paths in a file are relative to that file.

The training config is nested under ``proxy``, not widened by a section as the supernet's and
AutoHAS's are (``training_config``): those configs describe one training run, while a search is
many, each of which trains the proxy recipe with the sampled network and hyper-parameters; the
search has no model, run directory or data of its own.
"""

from __future__ import annotations

from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field
from pydantic.dataclasses import dataclass

from effml.search.spaces.catalog import space_for
from effml.search.spaces.search_space import SearchSpace
from effml.train.config import (
    CONFIG_SCHEMA,
    Config,
    InputPath,
    config_to_dict,
    load_config,
)


def _on_off(value: Any) -> Any:
    """YAML reads an unquoted on/off as true/false: take them back as the words."""
    return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


@dataclass(config=CONFIG_SCHEMA)
class StudyConfig:
    """The space, the strategy and where the study lives."""

    space: Annotated[str, Field(min_length=1), InputPath((".json", ".yaml", ".yml"))] = "mnasnet"
    """a named space (mnasnet, mobiledet, mobiledet_ibn, mobiledet_ibn_fused, mixnet_kernels,
    efficientnet_compound, bignas, autohas) or a space file (.json/.yaml)"""
    resolution: Annotated[int, Field(ge=8)] | None = None
    """input size of the searched networks (default: proxy data.image_size)"""
    detector: Literal["ssdlite", "retinanet"] | None = None
    """null: the sampled networks are classifiers; ssdlite: each sampled backbone is wrapped into an
    SSDLite detector (MobileDets, arXiv 2004.14525) that the proxy trains on a detection data set
    and the latency measures whole; the detector spec is what a trial records and exports;
    retinanet: the spinenet space's members are RetinaNet detectors already (SpineNet, arXiv 1912.05027)"""
    trials: Annotated[int, Field(ge=1)] = 24
    """finished trials the study reaches (a resumed study counts the ones it has)"""
    strategy: Literal["random", "tpe", "nsga2", "evolution", "reinforce", "tunas"] = "evolution"
    """a black-box strategy (each trial a proxy training), or tunas: one weight-sharing search (the
    ``tunas`` section; the proxy section trains the supernet, proxy.run.dir is its run directory)"""
    strategy_options: dict[str, float | int | bool] = field(default_factory=dict)
    """e.g. population_size: 8 (evolution)"""
    pruner: Literal["none", "median", "successive_halving"] = "none"
    """stop poor trials early from their per-epoch accuracy"""
    seed: int = 0
    """the strategy's seed; trial n trains with seed + n"""
    storage: Annotated[str, Field(min_length=1), InputPath((".db", ".sqlite", ".sqlite3"))] = "search.db"
    """a SQLite file (.db, .sqlite), or any database URL Optuna accepts (postgresql://...)"""
    study: Annotated[str, Field(min_length=1)] = "search"
    """the study's name inside the storage"""
    runner: Literal["local", "ray"] = "local"
    """local: worker processes on this machine; ray: trials as Ray tasks"""
    workers: Annotated[int, Field(ge=1)] = 1
    """trials in parallel"""
    threads: Annotated[int, Field(ge=1)] = 1
    """torch threads per worker (2 cores: 2 workers x 1 thread)"""
    ray_address: str | None = None
    """runner ray: an existing cluster (`ray start --head`); null: a local Ray instance"""
    heartbeat_s: Annotated[int, Field(ge=1)] = 20
    """a driver records a heartbeat of each trial it runs this often (seconds; Optuna's RDBStorage
    heartbeat), so several drivers can share a study and a dead driver's trials are found"""
    grace_s: Annotated[int, Field(ge=2)] | None = None
    """a RUNNING trial whose heartbeat is older than this (seconds) belongs to a dead driver: it is
    failed and re-sampled (default 3 x heartbeat_s)"""
    max_failures: Annotated[int, Field(ge=0)] = 10
    """stop the study after this many failed trials in a row"""
    baseline: Annotated[Literal["auto", "on", "off"], BeforeValidator(_on_off)] = "auto"
    """on: after the study, score search.trials random samples with the same evaluator (a second
    study, '<study>-random', RandomSampler seeded search.seed + 1), so the report can say whether
    the strategy beat random search beyond its spread; auto: on for objective.accuracy=supernet
    (each sample costs a second), off for proxy training (it would double the trainings); a
    study whose strategy is random is its own baseline"""


@dataclass(config=CONFIG_SCHEMA)
class ObjectiveConfig:
    """What a trial is scored on: the MnasNet reward at a latency target, or accuracy and latency
    as two objectives (a Pareto front)."""

    kind: Literal["reward", "multi"] = "reward"
    """reward: ACC * (LAT / T)^w (MnasNet, arXiv 1807.11626 eq. 2); multi: maximise ACC, minimise LAT"""
    target: Annotated[float, Field(gt=0)] | None = None
    """T: in ms (latency: measured or table) or in millions of MACs (latency: flops); needed for kind reward"""
    constraint: Literal["soft", "hard"] = "soft"
    """soft: alpha = beta = -0.07; hard: alpha = 0, beta = -1 (MnasNet section 3)"""
    alpha: float | None = None
    """the exponent at LAT <= T (default: by constraint)"""
    beta: float | None = None
    """the exponent at LAT > T (default: by constraint)"""
    latency: Literal["measured", "table", "flops"] = "measured"
    """measured on this machine, predicted from a latency table, or MACs"""
    runtime: Literal["eager", "onnxruntime", "int8", "openvino"] = "eager"
    """what latency is measured on: eager PyTorch, ONNX Runtime fp32, ONNX Runtime int8 (the graph
    `effml export --int8` writes) or OpenVINO fp32 (the `effml[openvino]` extra); a latency table
    must have been built with the same runtime"""
    table: Annotated[str | None, InputPath(".json")] = None
    """latency: table: the file `effml search latency-table` wrote"""
    batch_size: Annotated[int, Field(ge=1)] = 1
    """images per measured forward pass"""
    threads: Annotated[int, Field(ge=1)] = 1
    """threads the measured model runs on"""
    accuracy: Literal["holdout", "val", "supernet"] = "holdout"
    """holdout: each sample is trained (the proxy) and scored on proxy data.holdout of the training
    images (the search never sees val); val: on val; supernet: no training, each sample is scored as
    a child of the trained supernet objective.supernet (BN re-estimated, top-1 on that run's data.holdout)"""
    supernet: Annotated[str | None, InputPath()] = None
    """accuracy: supernet: the run directory `effml supernet train` wrote (BigNAS), or the proxy.run.dir
    of a finished TuNAS search; the searched space must be that run's (classes and resolution default
    to the run's)"""
    holdout_images: Annotated[int, Field(ge=1)] | None = None
    """accuracy: supernet: score on the first N of the run's held-out images (a fixed subset; null: all).
    Fewer images score more candidates an hour, with a noisier top-1 (a binomial standard error of
    about 1.1 points at 85% on 1,000 images)"""
    calibration_batches: Annotated[int, Field(ge=1)] | None = None
    """accuracy: supernet: training batches that re-estimate a child's BN statistics (null: the run's,
    supernet.calibration_batches or TuNAS's 16)"""
    metric: Literal["top1", "AP", "AP50", "AP75"] | None = None
    """what ACC is: top-1 (classification), or COCO box AP, AP50, AP75 of a detector (each reported
    in percent, ACC is it / 100); null: top1, or AP50 with search.detector"""
    int8_min_agreement: Annotated[float, Field(gt=0, le=1)] | None = None
    """a constraint for the model that ships in int8: after its proxy training, each sample's int8
    model (the recipe of `effml export --int8`, calibrated on 32 training images) is compared with
    its fp32 model on the held-out images; below this top-1 agreement (a fraction) the sample scores
    0 (reward, or accuracy of kind multi), its measured accuracy kept in the trial's metrics.
    Classifiers trained by the proxy only (not with search.detector or accuracy: supernet)"""


@dataclass(config=CONFIG_SCHEMA)
class TunasConfig:
    """TuNAS (Bender et al., arXiv 2008.06120; google-research ``tunas/mobile_architecture_search.py``):
    each step one child sampled from the controller trains the shared weights, then its accuracy on a
    held-out batch and its cost give the reward that updates the controller (REINFORCE, Adam)."""

    reward: Literal["absolute", "mnasnet"] = "absolute"
    """absolute: Q + beta |T(a) / T0 - 1| (TuNAS); mnasnet: Q (T(a) / T0)^beta (MnasNet's soft reward)"""
    beta: Annotated[float, Field(lt=0)] = -0.10
    """the cost weight (negative): TuNAS's code default (``rl_cost_model_exponent``); MnasNet's soft reward uses -0.07"""
    controller_lr: Annotated[float, Field(gt=0)] = 0.005
    """Adam's learning rate for the controller's logits once it learns (TuNAS: 0.0003 x batch / 256 over
    tens of thousands of steps; a short search needs a larger one)"""
    lr_growth: Annotated[float, Field(ge=1)] = 10.0
    """the controller's learning rate grows exponentially by this factor from its start to the end (TuNAS: 10)"""
    baseline_momentum: Annotated[float, Field(ge=0, lt=1)] = 0.95
    """the reward baseline's moving-average momentum"""
    entropy_weight: Annotated[float, Field(ge=0)] = 0.0
    """an entropy bonus on the controller's loss (TuNAS: 0)"""
    delay: Annotated[float, Field(ge=0, lt=1)] = 0.25
    """the fraction of steps before the controller learns (its learning rate 0; no reward is scored)"""
    op_warmup: Annotated[float, Field(ge=0, lt=1)] = 0.25
    """every op of a layer runs (averaged) with a probability decaying from 1 to 0 over this fraction of steps"""
    filter_warmup: Annotated[float, Field(ge=0, lt=1)] = 0.25
    """the largest width and expansion are used with a probability decaying from 1 to 0 over this fraction"""
    reward_batch: Annotated[float, Field(gt=0)] = 4.0
    """the held-out batch that scores a child, in training batches (TuNAS: 4)"""
    zero_init_last_bn: bool = True
    """residual blocks start as the identity (their last BN's gamma 0), as BigNAS's supernet does
    (arXiv 2003.11142 section 3.1); false: the plain networks' initialisation"""
    kernels: Literal["shared", "separate"] = "shared"
    """shared: a smaller kernel is the centre of the largest (BigNAS); separate: each kernel size of a
    layer has its own kxk weights, as TuNAS's code builds them (its op warm-up over kernel sizes is not
    implemented, and without it separate kernels trained slower here: benchmarks/supernet_trainability.py)"""
    detection_signal: Literal["loss", "ap50"] = "loss"
    """with search.detector=ssdlite, the quality Q of a child's held-out batch: loss (exp(-detection loss), no
    post-processing) or ap50 (COCO AP at IoU 0.5 of those images). loss ranked 16 children of a shapes
    supernet as their full held-out AP50 does better than ap50 did, one batch of 32 images each
    (Kendall tau 0.50 against 0.40; benchmarks/detection_reward_signal.py), and costs 14% less"""


@dataclass(config=CONFIG_SCHEMA)
class SearchConfig:
    """The whole search configuration."""

    search: StudyConfig = field(default_factory=StudyConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    proxy: Config = field(default_factory=Config)
    tunas: TunasConfig = field(default_factory=TunasConfig)


def load_search_config(path: str | Path | None, overrides: list[str] = ()) -> SearchConfig:
    """Read a search YAML (optional) and apply ``section.key=value`` overrides."""
    return load_config(path, overrides, schema=SearchConfig)


def search_config_to_dict(cfg: SearchConfig) -> dict[str, Any]:
    """The config as plain data for YAML/JSON (and the study's record)."""
    return config_to_dict(cfg)


def build_space(cfg: SearchConfig, num_classes: int | None = None) -> SearchSpace:
    """The config's space (a named one, or a .json/.yaml file) for ``num_classes`` classes (default:
    ``scored_classes(cfg)``) at the search's resolution (default: ``scored_image_size(cfg)``)."""
    if num_classes is None:
        num_classes = scored_classes(cfg)
    return space_for(cfg.search.space, num_classes, cfg.search.resolution or scored_image_size(cfg))


def scored_classes(cfg: SearchConfig) -> int:
    """The classes of the data the samples are scored on: the proxy data set's, or with
    ``objective.accuracy=supernet`` the supernet run's."""
    if cfg.objective.accuracy == "supernet":
        from effml.search.study.supernet_proxy import supernet_accuracy

        return len(supernet_accuracy(cfg).trained.info["classes"])
    from effml.train.data import num_classes

    return num_classes(cfg.proxy)


def scored_image_size(cfg: SearchConfig) -> int:
    """The input size of the data the samples are scored on: the proxy's ``data.image_size``, or
    with ``objective.accuracy=supernet`` the supernet run's (its largest child's resolution)."""
    if cfg.objective.accuracy == "supernet":
        from effml.search.study.supernet_proxy import supernet_accuracy

        return supernet_accuracy(cfg).trained.cfg.data.image_size
    return cfg.proxy.data.image_size
