"""Latency lookup tables: a network's latency predicted as the sum of its measured layers.

FBNet (arXiv 1812.03443, Sec. 3.2) and ChamNet (arXiv 1812.08934, Sec. 4.2) time every distinct
layer of a search space once on the target device and predict a network as the sum over its layers,
so a search costs thousands of candidates for the price of one measurement each. Here a layer is one
planned block (``effml.spec.plan``), keyed by everything that sets its cost; the stem and the head
(1x1 conv, pool, classifier) are parts too; what the parts miss (the network's own call, the input
and the caches as a whole network sees them) is one ``overhead_ms``, the median gap on calibration
networks. Validation networks, held out of the calibration, are measured end to end and compared.

Parts and networks are timed together in interleaved rounds, one call each per round, on the
calling thread's CPU time when there is one thread: on a shared machine a busy spell then slows
everything alike, and time spent waiting for a core is not counted (see ``effml.measure.latency``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import statistics
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from effml.errors import EffmlError
from effml.files import atomic_write_text
from effml.layers import BatchNormAct2d
from effml.measure.latency import (
    LIBRARY,
    check_runtime,
    clock_fn,
    machine_fingerprint,
    prepared_call,
    resolve_clock,
    time_interleaved,
    torch_threads,
)
from effml.models.builder import build_block, build_conv
from effml.models.network import EfficientNet
from effml.spec import NetworkSpec, to_dict
from effml.spec.plan import LayerPlan, NetworkPlan, plan

FORMAT = "effml.latency_table"  # the file's "format" and "version" fields (_TableFile)
VERSION = 1
REBUILD = ("rebuild it on this machine with `effml search latency-table ...` (or "
           "effml.measure.latency_table.build_latency_table), or use latency: measured")

Progress = Callable[[int, int, str], None]  # (done, total, what is being measured)
Item = NetworkSpec | tuple[LayerPlan, NetworkSpec]


class LatencyTableError(EffmlError):
    """A latency table is missing, malformed, from another machine or setting, or lacks a layer."""


# ---------------------------------------------------------------------------------------------- keys


def _pad(spec: NetworkSpec) -> str:
    return spec.padding or "sym"


def layer_key(layer: LayerPlan, spec: NetworkSpec) -> str:
    """A canonical string of everything that sets one planned block's cost."""
    b = layer.block
    return "|".join([
        layer.kind, f"i{layer.in_channels}", f"o{layer.out_channels}",
        "k" + ".".join(map(str, layer.kernel_size)), f"s{layer.stride}",
        f"{layer.input_size[0]}x{layer.input_size[1]}", "m" + ".".join(map(str, layer.mid_channels)),
        f"se{layer.se_channels}", f"r{int(layer.residual)}", layer.act,
        f"g{b.exp_groups}.{b.proj_groups}", f"p{_pad(spec)}",
    ])


def stem_key(net: NetworkPlan) -> str:
    """The key of a plan's stem: 3x3 stride-2 conv + BN + act."""
    s, spec = net.stem, net.spec
    return "|".join(["stem", f"i{s.in_channels}", f"o{s.out_channels}", "k3", "s2",
                     f"{s.input_size[0]}x{s.input_size[1]}", spec.act, f"p{_pad(spec)}"])


def head_key(net: NetworkPlan) -> str:
    """The key of a plan's head: 1x1 conv + BN + act, global pool, classifier."""
    h, spec = net.head, net.spec
    return "|".join(["head", f"i{h.in_channels}", f"o{h.out_channels}",
                     f"{h.input_size[0]}x{h.input_size[1]}", spec.act, f"c{spec.num_classes}",
                     f"p{_pad(spec)}"])


def spec_id(spec: NetworkSpec) -> str:
    """A short content hash of a spec (which networks calibrated a table)."""
    text = json.dumps(to_dict(spec), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------- parts


class _Stem(nn.Sequential):
    """Stem conv + BN + act, as ``EfficientNet`` runs them."""

    def __init__(self, net: NetworkPlan) -> None:
        spec = net.spec
        super().__init__(build_conv(net.stem, spec.padding),
                         BatchNormAct2d(spec.stem_channels, spec.act, spec.bn_eps, spec.bn_momentum))


class _Head(nn.Module):
    """1x1 head conv + BN + act, global average pool, classifier, as ``EfficientNet`` runs them."""

    def __init__(self, net: NetworkPlan) -> None:
        super().__init__()
        spec = net.spec
        self.conv_head = build_conv(net.head, spec.padding)
        self.bn2 = BatchNormAct2d(spec.head_channels, spec.act, spec.bn_eps, spec.bn_momentum)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(spec.head_channels, spec.num_classes) if spec.num_classes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.global_pool(self.bn2(self.conv_head(x))).flatten(1))


@dataclass(frozen=True)
class _Part:
    """One thing to time: its key, how to build its module, and its input (channels, h, w)."""

    key: str
    build: Callable[[], nn.Module]
    shape: tuple[int, int, int]


def _layer_part(layer: LayerPlan, spec: NetworkSpec) -> _Part:
    return _Part(layer_key(layer, spec), lambda: build_block(layer, spec),
                 (layer.in_channels, *layer.input_size))


def _parts_of(net: NetworkPlan) -> list[_Part]:
    """Stem, blocks, head of one plan, in forward order."""
    return [_Part(stem_key(net), lambda: _Stem(net), (net.stem.in_channels, *net.input_size)),
            *(_layer_part(layer, net.spec) for layer in net.layers),
            _Part(head_key(net), lambda: _Head(net), (net.head.in_channels, *net.head.input_size))]


def _collect(items: Iterable[Item]) -> dict[str, _Part]:
    """The distinct parts of specs (all of them) and of (LayerPlan, spec) pairs (the layer, and the
    stem and head of the spec it was planned under, so a space's stem and head variants come too)."""
    parts: dict[str, _Part] = {}
    planned: set[int] = set()  # specs whose stem and head are in (pairs share a few specs)
    for item in items:
        if isinstance(item, NetworkSpec):
            found = _parts_of(plan(item))
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], NetworkSpec):
            layer, spec = item
            if not isinstance(layer, LayerPlan):
                raise LatencyTableError(f"a latency table item (layer, spec) needs a LayerPlan first, "
                                        f"got {type(layer).__name__}")
            found = [_layer_part(layer, spec)]
            if id(spec) not in planned:
                planned.add(id(spec))
                whole = _parts_of(plan(spec))
                found += [whole[0], whole[-1]]
        else:
            raise LatencyTableError(f"latency table items are NetworkSpecs or (LayerPlan, NetworkSpec) "
                                    f"pairs, got {type(item).__name__}")
        for part in found:
            parts.setdefault(part.key, part)
    return parts


# --------------------------------------------------------------------------------------- the records


@dataclass(frozen=True)
class Settings:
    """How every timing of a table was taken: ``rounds`` interleaved calls per part after a warm-up,
    ``chunk`` parts alive at once, on ``clock`` (None: ``resolve_clock`` picks when building)."""

    warmup: int = 3
    rounds: int = 50
    chunk: int = 1024
    clock: str | None = None


@dataclass(frozen=True)
class Calibration:
    """The overhead fit: which networks, and each one's measured minus summed latency (ms)."""

    spec_ids: tuple[str, ...] = ()
    residuals_ms: tuple[float, ...] = ()


@dataclass(frozen=True)
class Validation:
    """Predicted vs measured on held-out networks: absolute percentage errors."""

    n: int
    median_abs_pct: float
    p90_abs_pct: float
    max_abs_pct: float
    measured_ms: tuple[float, ...] = ()
    predicted_ms: tuple[float, ...] = ()


@dataclass(frozen=True)
class LatencyTable:
    """Per-part median latencies (ms) on one machine, runtime, thread count and batch size."""

    fingerprint: dict[str, Any]
    runtime: str
    threads: int
    batch_size: int
    entries: dict[str, float]  # layer_key / stem_key / head_key -> median ms
    overhead_ms: float = 0.0
    calibration: Calibration = field(default_factory=Calibration)
    validation: Validation | None = None
    settings: Settings = field(default_factory=Settings)

    def missing(self, items: Iterable[Item]) -> list[str]:
        """Keys of the parts of ``items`` that the table lacks."""
        return [k for k in _collect(items) if k not in self.entries]

    def predict(self, spec: NetworkSpec) -> float:
        """Predicted latency (ms) of ``spec`` at its resolution."""
        return predict(self, spec)

    def extend(self, items: Iterable[Item], *, progress: Progress | None = None) -> LatencyTable:
        """A table that also holds the missing parts of ``items``, measured as this one was (the
        overhead is kept; re-validate if many parts are new)."""
        _check_machine(self, "the table")
        parts = [p for k, p in _collect(items).items() if k not in self.entries]
        measured = _measure(parts, self.runtime, self.threads, self.batch_size, self.settings, progress,
                            f"{len(parts)} new parts")
        return replace(self, entries={**self.entries, **measured})

    def with_validation(self, validation: Validation) -> LatencyTable:
        """The table with a validation record."""
        return replace(self, validation=validation)

    def save(self, path: str | Path) -> None:
        """Write the table as JSON, atomically."""
        save_latency_table(self, path)


# ------------------------------------------------------------------------------------------ measuring


def _network_part(spec: NetworkSpec) -> _Part:
    return _Part(f"net|{spec_id(spec)}", lambda: EfficientNet(spec),
                 (spec.in_channels, spec.resolution, spec.resolution))


def _measure(parts: Sequence[_Part], runtime: str, threads: int, batch_size: int, settings: Settings,
             progress: Progress | None, what: str) -> dict[str, float]:
    """Median ms of each part on random input of its shape, all parts of a chunk interleaved."""
    out: dict[str, float] = {}
    gen = torch.Generator().manual_seed(0)
    clock = clock_fn(resolve_clock(settings.clock, threads))  # type: ignore[arg-type]
    with torch_threads(threads), torch.random.fork_rng(devices=[]):  # module init leaves the RNG as it was
        for start in range(0, len(parts), settings.chunk):
            chunk = parts[start:start + settings.chunk]
            label = what if len(parts) <= settings.chunk else f"{what} {start + 1}-{start + len(chunk)}"
            # every module is built before any is prepared: eager timing runs under inference_mode
            built = [(p.build(), torch.randn(batch_size, *p.shape, generator=gen)) for p in chunk]
            with contextlib.ExitStack() as stack:
                fns = []
                for i, (model, x) in enumerate(built):
                    if progress:
                        progress(i, len(built), f"{label}: preparing {i + 1} of {len(built)}")
                    fns.append(stack.enter_context(prepared_call(model, x, runtime=runtime, threads=threads)))
                samples = time_interleaved(
                    fns, warmup=settings.warmup, rounds=settings.rounds, clock=clock,
                    progress=progress and (lambda r, n: progress(r, n, f"{label}: round {r} of {n}")))
            out.update((p.key, statistics.median(t)) for p, t in zip(chunk, samples))
    return out


def _parts_sum(table: LatencyTable, spec: NetworkSpec) -> float:
    """Sum of the table's entries over the spec's stem, blocks and head (ms)."""
    net = plan(spec)
    total = 0.0
    for i, part in enumerate(_parts_of(net)):
        ms = table.entries.get(part.key)
        if ms is None:
            where = "stem" if i == 0 else "head" if i == len(net.layers) + 1 else (
                f"layer {i - 1} (stage {net.layers[i - 1].stage}, row {net.layers[i - 1].row}, "
                f"repeat {net.layers[i - 1].repeat})")
            raise LatencyTableError(
                f"the {where} of this network is not in the latency table: {part.key}; the table was "
                f"built for other layers. Extend it (table.extend([spec])) or rebuild it over this "
                f"search space, or use latency: measured")
        total += ms
    return total


def predict(table: LatencyTable, spec: NetworkSpec) -> float:
    """Predicted latency (ms) of ``spec``: its stem, blocks and head from the table, plus the overhead."""
    return _parts_sum(table, spec) + table.overhead_ms


def _check_machine(table: LatencyTable, where: str) -> None:
    here = machine_fingerprint()
    for name in ("cpu", "cores"):
        if table.fingerprint.get(name) != here[name]:
            raise LatencyTableError(
                f"{where} was measured on another machine (fingerprint.{name} "
                f"{table.fingerprint.get(name)!r}, this machine {here[name]!r}); {REBUILD}")


def build_latency_table(
    items: Iterable[Item],
    *,
    runtime: str = "eager",
    threads: int = 1,
    batch_size: int = 1,
    calibration_specs: Sequence[NetworkSpec] = (),
    validation_specs: Sequence[NetworkSpec] = (),
    settings: Settings | None = None,
    progress: Progress | None = None,
) -> LatencyTable:
    """Time each distinct part of ``items`` (NetworkSpecs, or (LayerPlan, spec) pairs such as a
    space's ``layer_variants()``) on this machine, fit the overhead on ``calibration_specs`` and validate on
    ``validation_specs``; all are timed in the same interleaved rounds, so a slow spell of the
    machine falls on parts and networks alike."""
    check_runtime(runtime)
    if threads < 1 or batch_size < 1:
        raise LatencyTableError(f"threads and batch_size must be >= 1 (got {threads}, {batch_size})")
    settings = settings or Settings()
    if settings.warmup < 0 or settings.rounds < 1 or settings.chunk < 1:
        raise LatencyTableError(f"settings need warmup >= 0, rounds >= 1 and chunk >= 1, got {settings}")
    settings = replace(settings, clock=resolve_clock(settings.clock, threads))  # type: ignore[arg-type]
    calibration_specs, validation_specs = list(calibration_specs), list(validation_specs)
    _check_disjoint(map(spec_id, calibration_specs), validation_specs)
    parts = _collect([*items, *calibration_specs, *validation_specs])
    networks = {p.key: p for p in map(_network_part, calibration_specs + validation_specs)}
    measured = _measure([*parts.values(), *networks.values()], runtime, threads, batch_size, settings,
                        progress, f"{len(parts)} parts + {len(networks)} networks")
    entries = {k: measured[k] for k in parts}
    table = LatencyTable(machine_fingerprint(), runtime, threads, batch_size, entries, settings=settings)
    if calibration_specs:
        residuals = tuple(measured[_network_part(s).key] - _parts_sum(table, s) for s in calibration_specs)
        table = replace(table, overhead_ms=statistics.median(residuals), calibration=Calibration(
            tuple(spec_id(s) for s in calibration_specs), residuals))
    if validation_specs:
        table = table.with_validation(_compare(
            [predict(table, s) for s in validation_specs],
            [measured[_network_part(s).key] for s in validation_specs]))
    return table


def _check_disjoint(calibration_ids: Iterable[str], validation: Sequence[NetworkSpec]) -> None:
    used = set(calibration_ids)
    reused = [i for i, s in enumerate(validation) if spec_id(s) in used]
    if reused:
        raise LatencyTableError(f"validation networks {reused} also calibrate the table's overhead; "
                                f"validate on other networks")


def _compare(predicted: Sequence[float], measured: Sequence[float]) -> Validation:
    errors = sorted(abs(p - m) / m * 100 for p, m in zip(predicted, measured))
    return Validation(
        n=len(errors), median_abs_pct=statistics.median(errors),
        p90_abs_pct=errors[min(len(errors) - 1, math.ceil(0.9 * len(errors)) - 1)],
        max_abs_pct=errors[-1], measured_ms=tuple(measured), predicted_ms=tuple(predicted),
    )


def validate_table(table: LatencyTable, specs: Sequence[NetworkSpec], *,
                   progress: Progress | None = None) -> Validation:
    """Measure ``specs`` end to end now, as the table was measured, and compare with its predictions
    (unlike the validation at build time, this also sees how the machine changed since)."""
    specs = list(specs)
    if not specs:
        raise LatencyTableError("validate_table needs at least one network spec")
    _check_machine(table, "the latency table")
    _check_disjoint(table.calibration.spec_ids, specs)
    predicted = [predict(table, s) for s in specs]  # a missing layer fails before any timing
    networks = [_network_part(s) for s in specs]
    measured = _measure(list({p.key: p for p in networks}.values()), table.runtime, table.threads,
                        table.batch_size, table.settings, progress, f"{len(specs)} validation networks")
    return _compare(predicted, [measured[p.key] for p in networks])


# ---------------------------------------------------------------------------------------------- files


class _TableFile(BaseModel):
    """The JSON layout of a saved table; pydantic checks every field's type on load."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["effml.latency_table"]
    version: Literal[1]
    fingerprint: dict[str, Any]
    runtime: Literal["eager", "onnxruntime", "int8", "openvino"]
    threads: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    overhead_ms: float
    calibration: Calibration
    validation: Validation | None
    settings: Settings
    entries: dict[str, float]


def _to_json(table: LatencyTable) -> str:
    data = {"format": FORMAT, "version": VERSION, **asdict(table),
            "entries": dict(sorted(table.entries.items()))}
    return json.dumps(data, indent=1) + "\n"


def save_latency_table(table: LatencyTable, path: str | Path) -> None:
    """Write a table as JSON (temp file, fsync, rename: never half-written)."""
    atomic_write_text(Path(path), _to_json(table))


def _bad(path: Path, what: str) -> LatencyTableError:
    return LatencyTableError(f"latency table {path}: {what}; {REBUILD}")


def load_latency_table(path: str | Path, *, runtime: str | None = None, threads: int | None = None,
                       batch_size: int | None = None) -> LatencyTable:
    """Read a table, refusing one measured on another machine or, when given, another runtime,
    thread count or batch size."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise _bad(path, "no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _bad(path, f"cannot be read as JSON ({e})") from None
    try:
        data = _TableFile.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(map(str, err["loc"])) or "(top level)"
        raise _bad(path, f"field {where}: {err['msg']}") from None
    table = LatencyTable(**{f.name: getattr(data, f.name) for f in fields(LatencyTable)})
    _check_machine(table, f"latency table {path}")
    library = LIBRARY[table.runtime]
    if table.fingerprint.get(library) != machine_fingerprint()[library]:
        warnings.warn(f"latency table {path} was measured with {library} {table.fingerprint.get(library)} "
                      f"and this is {machine_fingerprint()[library]}; its figures may be off, rebuild it "
                      f"if predictions matter", stacklevel=2)
    for name, want in (("runtime", runtime), ("threads", threads), ("batch_size", batch_size)):
        if want is not None and getattr(table, name) != want:
            raise _bad(path, f"field {name} is {getattr(table, name)!r} but {want!r} was asked for")
    return table

