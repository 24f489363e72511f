"""Search spaces as data over the spec: a base ``NetworkSpec`` plus named choices.

A choice sits at a block row's field (kind, kernel_size, expand_ratio, se_ratio, filters,
repeats, skip, the Tucker compressions), at a network field (resolution, width multiplier, the
EfficientNet compound coefficients) or at a training-config key (a hyper-parameter). Every
sample is a plain spec plus config overrides: it builds with the one builder and trains with
the Trainer, and nothing about it remembers the space.

Decisions are suggested unconditionally through Optuna's define-by-run API, so every strategy
(TPE, evolution, REINFORCE) sees one fixed set of decisions; a field that does not apply to the
sampled kind (an expansion for ``ds``, an SE for Tucker) is ignored for that sample,
which is why distinct specs (``size()``) are fewer than decision vectors (``decisions()``).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict, ValidationError

from effml.errors import SearchError, SpecError
from effml.spec import BLOCK_KINDS, BlockSpec, NetworkSpec
from effml.spec.plan import LayerPlan, plan
from effml.spec.scaling import compound_scale, round_filters

# Block-row fields a choice may set, with the rule that maps an option onto the base row.
# ``filters`` multiplies the base row's width (rounded to a multiple of 8 as TF's round_filters);
# ``repeats`` adds to its repeats (MnasNet's {-1, 0, +1} relative to MobileNetV2).
ROW_FIELDS = ("kind", "kernel_size", "expand_ratio", "se_ratio", "filters", "out_channels", "repeats",
              "skip", "input_compression", "output_compression")
# Network fields: input resolution, a width multiplier on every width (compound_scale's ``width``),
# the EfficientNet compound coefficients (alpha, beta, gamma) at the space's ``phi``, and the stem
# and head widths (BigNAS, arXiv 2003.11142, Table 1: stem 32-40, head 1280-1408 channels).
NETWORK_FIELDS = ("resolution", "width", "compound", "stem_channels", "head_channels")
HYPER_KINDS = ("categorical", "float", "int")
# A space file's records: an unknown key is an error; numbers are read as the field needs (a
# name or key written as a number becomes text), as YAML and JSON write them.
_SPACE_FILE = ConfigDict(extra="forbid", coerce_numbers_to_str=True, use_attribute_docstrings=True)


@dataclass(frozen=True)
class Choice:
    """One decision: its options at a block row's field (``stage``/``row`` set) or a network field.

    ``kinds``: the block kinds the field applies to (empty: all); for a row of another kind the
    decision is ignored (MobileDets: expansion and kernel for IBN and fused IBN, the
    compressions for Tucker)."""

    field: str
    options: tuple[Any, ...]
    stage: int | None = None
    row: int | None = None
    kinds: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The Optuna parameter name: ``s<stage>.r<row>.<field>`` or the network field."""
        return self.field if self.stage is None else f"s{self.stage}.r{self.row}.{self.field}"


@dataclass(frozen=True)
class HyperChoice:
    """A training hyper-parameter: a config key (``optim.lr``) with options or numeric bounds."""

    key: str
    kind: str = "categorical"
    options: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    log: bool = False

    @property
    def name(self) -> str:
        """The Optuna parameter name: the config key."""
        return self.key


@dataclass(frozen=True)
class Sample:
    """One member of a space: the decisions taken, the spec they give, and the training
    hyper-parameters they set (config key -> typed value, e.g. ``{"optim.lr": 0.05}``)."""

    params: dict[str, Any]
    spec: NetworkSpec
    hyper: dict[str, Any] = field(default_factory=dict)

    @property
    def overrides(self) -> tuple[str, ...]:
        """The hyper-parameters as ``key=value`` overrides, as a study records them."""
        return tuple(f"{key}={value}" for key, value in self.hyper.items())


def _suggestible(option: Any) -> Any:
    """Optuna stores None/bool/int/float/str; a tuple of kernels becomes '3,5'."""
    if isinstance(option, (tuple, list)):
        return ",".join(str(o) for o in option)
    return option


class Space(Protocol):
    """What every search space offers a search: samples from an Optuna trial, members by their
    decisions, random members, a record for the study, a summary. ``SearchSpace`` (choices over a
    classifier spec) and ``ScalePermutedSpace`` (SpineNet's block tables) are the two kinds."""

    name: str
    # True: members are classifiers built layer by layer, so a latency table can cost them and the
    # choices can be written to a space file; False: members are whole detectors.
    layered: ClassVar[bool]

    def sample(self, trial: Any) -> Sample: ...

    def member(self, params: Mapping[str, Any]) -> Sample: ...

    def random_member(self, rng: random.Random) -> Sample: ...

    def decisions(self) -> int: ...

    def to_dict(self) -> dict[str, Any]: ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class SearchSpace:
    """A base spec plus choices; ``phi`` is the compound coefficient the ``compound`` choice uses."""

    layered: ClassVar[bool] = True

    name: str
    base: NetworkSpec
    choices: tuple[Choice, ...] = ()
    hyper: tuple[HyperChoice, ...] = ()
    phi: float = 1.0
    _decode: dict[str, dict[Any, Any]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "choices", tuple(self.choices))
        object.__setattr__(self, "hyper", tuple(self.hyper))
        names = [c.name for c in (*self.choices, *self.hyper)]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise SearchError(f"space {self.name!r}: decisions {dupes} are given more than once")
        for c in self.choices:
            _check_choice(self, c)
            self._decode[c.name] = {_suggestible(o): o for o in c.options}
        for h in self.hyper:
            _check_hyper(self, h)
        for stage, row in sorted({(c.stage, c.row) for c in self.choices if c.stage is not None}):
            for _ in self._row_outcomes(stage, row):  # every combination must give a valid block
                pass

    # -- sampling -------------------------------------------------------------------------------

    def sample(self, trial: Any) -> Sample:
        """Ask ``trial`` (an ``optuna.Trial``) for every decision; the member it picked."""
        params: dict[str, Any] = {}
        for c in self.choices:
            params[c.name] = trial.suggest_categorical(c.name, [_suggestible(o) for o in c.options])
        for h in self.hyper:
            if h.kind == "categorical":
                params[h.name] = trial.suggest_categorical(h.name, [_suggestible(o) for o in h.options])
            elif h.kind == "float":
                params[h.name] = trial.suggest_float(h.name, h.low, h.high, log=h.log)
            else:
                params[h.name] = trial.suggest_int(h.name, int(h.low), int(h.high), log=h.log)
        return self.member(params)

    def member(self, params: Mapping[str, Any]) -> Sample:
        """The member that the decisions ``params`` (names as ``sample`` gives them) pick."""
        missing = [c.name for c in (*self.choices, *self.hyper) if c.name not in params]
        if missing:
            raise SearchError(f"space {self.name!r}: decisions {missing} are missing from {dict(params)}")
        picked = {}
        for c in self.choices:
            value = params[c.name]
            if value not in self._decode[c.name]:
                raise SearchError(f"space {self.name!r}: {value!r} is not an option of {c.name} "
                                  f"(options: {list(self._decode[c.name])})")
            picked[c.name] = self._decode[c.name][value]
        spec = self._apply(picked)
        return Sample(dict(params), spec, {h.key: params[h.name] for h in self.hyper})

    def _apply(self, picked: Mapping[str, Any]) -> NetworkSpec:
        """The spec for the decoded options in ``picked`` (decisions absent keep the base)."""
        rows: dict[tuple[int, int], list[tuple[Choice, Any]]] = {}
        net: dict[str, Any] = {}
        for c in self.choices:
            if c.name not in picked:
                continue
            if c.stage is None:
                net[c.field] = picked[c.name]
            else:
                rows.setdefault((c.stage, c.row), []).append((c, picked[c.name]))
        stages = tuple(
            tuple(_row(b, rows[(s, r)], f"s{s}.r{r}") if (s, r) in rows else b for r, b in enumerate(stage))
            for s, stage in enumerate(self.base.stages))
        return self._scale(self.base.replace(stages=stages), net)

    def _scale(self, spec: NetworkSpec, net: Mapping[str, Any]) -> NetworkSpec:
        """Apply the network-level options (by field) to a spec whose rows are already chosen."""
        if "compound" in net:  # EfficientNet section 3.3: depth alpha^phi, width beta^phi, res gamma^phi
            alpha, beta, gamma = net["compound"]
            spec = compound_scale(spec, width=beta ** self.phi, depth=alpha ** self.phi,
                                  resolution=_round8(self.base.resolution * gamma ** self.phi))
        if "width" in net:
            spec = compound_scale(spec, width=net["width"])
        if "resolution" in net:
            spec = spec.replace(resolution=net["resolution"])
        for width in ("stem_channels", "head_channels"):
            if width in net:
                spec = spec.replace(**{width: int(net[width])})
        return spec

    def random_member(self, rng: random.Random) -> Sample:
        """A member drawn uniformly over the decisions (hyper-parameters: uniform in their range)."""
        params: dict[str, Any] = {c.name: _suggestible(rng.choice(c.options)) for c in self.choices}
        for h in self.hyper:
            if h.kind == "categorical":
                params[h.name] = _suggestible(rng.choice(h.options))
            elif h.log:
                value = math.exp(rng.uniform(math.log(h.low), math.log(h.high)))
                params[h.name] = value if h.kind == "float" else int(round(value))
            else:
                params[h.name] = rng.uniform(h.low, h.high) if h.kind == "float" else rng.randint(int(h.low), int(h.high))
        return self.member(params)

    # -- size and extremes ----------------------------------------------------------------------

    def decisions(self) -> int:
        """How many decision vectors the block and network choices allow (hyper-parameters aside)."""
        return math.prod(len(c.options) for c in self.choices)

    def size(self) -> int:
        """How many distinct specs the space holds: rows are independent, so a product of each
        row's distinct outcomes and the network choices' options."""
        rows = sorted({(c.stage, c.row) for c in self.choices if c.stage is not None})
        distinct = math.prod(len(set(self._row_outcomes(s, r))) for s, r in rows)
        return distinct * math.prod(len(c.options) for c in self.choices if c.stage is None)

    def _row_outcomes(self, stage: int, row: int) -> Iterator[BlockSpec]:
        """The row under every combination of its own choices (a ``SearchError`` if one is invalid)."""
        own = [c for c in self.choices if (c.stage, c.row) == (stage, row)]
        base = self.base.stages[stage][row]
        for combo in itertools.product(*(c.options for c in own)):
            yield _row(base, list(zip(own, combo)), f"s{stage}.r{row}")

    def extreme(self, largest: bool) -> Sample:
        """The largest (or smallest) member: numeric options at their max (min); a non-numeric
        option (a block kind) by the multiply-accumulates it gives, others at their base value."""
        params: dict[str, Any] = {}
        pick = max if largest else min
        for c in self.choices:
            if all(_is_number(o) for o in c.options):
                chosen = pick(c.options, key=_magnitude)
            else:
                chosen = pick(c.options, key=lambda o, c=c: plan(self._apply({c.name: o})).macs())
            params[c.name] = _suggestible(chosen)
        for h in self.hyper:  # the hyper-parameters do not size a network: their first option / low end
            params[h.name] = _suggestible(h.options[0]) if h.kind == "categorical" else (
                h.low if h.kind == "float" else int(h.low))
        return self.member(params)

    def largest(self) -> Sample:
        """The member with every size-like decision at its largest."""
        return self.extreme(True)

    def smallest(self) -> Sample:
        """The member with every size-like decision at its smallest."""
        return self.extreme(False)

    def layer_variants(self) -> Iterator[tuple[LayerPlan, NetworkSpec]]:
        """Every distinct planned block the space can build, with a spec to build it under: per
        row, each outcome of the row's choices after each width of the row before it, under each
        network choice; first repeat and later repeats (stride 1, in == out) both. A spec with a stem
        or head not seen before (stem and head widths are choices too) comes with one of its layers,
        so that a latency table built from these pairs costs every stem and head as well."""
        seen: set[tuple[Any, ...]] = set()
        seen_ends: set[tuple[Any, ...]] = set()
        members = self._variant_members()
        for spec in members:
            net = plan(spec)
            new_ends = (net.stem, net.head) not in seen_ends
            for layer in net.layers:
                if layer.repeat > 1:
                    continue
                key = (layer.kind, layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                       layer.input_size, layer.mid_channels, layer.se_channels, layer.residual, layer.act)
                if key not in seen or new_ends:
                    seen.add(key)
                    seen_ends.add((net.stem, net.head))
                    new_ends = False
                    yield layer, spec

    def _variant_members(self) -> Iterator[NetworkSpec]:
        """Members that together contain every (previous row's width, row outcome) pair."""
        net = [c for c in self.choices if c.stage is None]
        rows = [(s, r) for s, stage in enumerate(self.base.stages) for r in range(len(stage))]
        outcomes = {(s, r): _dedupe(self._row_outcomes(s, r)) if any((c.stage, c.row) == (s, r)
                                                                    for c in self.choices)
                    else [self.base.stages[s][r]] for s, r in rows}
        for net_combo in itertools.product(*(c.options for c in net)):
            net_picked = {c.field: o for c, o in zip(net, net_combo)}
            for i in range(len(rows)):
                # a row's input is the row before's output: only its width matters here
                prev = list({b.out_channels: b for b in outcomes[rows[i - 1]]}.values()) if i else [None]
                for before, here in itertools.product(prev, outcomes[rows[i]]):
                    stages = [list(stage) for stage in self.base.stages]
                    if before is not None:
                        s, r = rows[i - 1]
                        stages[s][r] = before
                    s, r = rows[i]
                    stages[s][r] = dataclasses.replace(here, repeats=max(here.repeats, 2))
                    yield self._scale(self.base.replace(stages=tuple(tuple(st) for st in stages)), net_picked)

    # -- persistence ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON/YAML-ready dict (``space_from_dict`` inverts it)."""
        from effml.zoo.kinds import spec_to_dict

        data: dict[str, Any] = {"name": self.name, "base": spec_to_dict(self.base)}
        if self.phi != 1.0:
            data["phi"] = self.phi
        data["choices"] = [
            {**({"at": f"s{c.stage}.r{c.row}"} if c.stage is not None else {}), "field": c.field,
             "options": [list(o) if isinstance(o, tuple) else o for o in c.options],
             **({"kinds": list(c.kinds)} if c.kinds else {})}
            for c in self.choices]
        data["hyper"] = [
            {"key": h.key, "kind": h.kind,
             **({"options": list(h.options)} if h.kind == "categorical"
                else {"low": h.low, "high": h.high, "log": h.log})}
            for h in self.hyper]
        return data

    def describe(self) -> str:
        """A readable summary: the base, each decision with its options, the size."""
        lines = [f"space {self.name}: {len(self.choices) + len(self.hyper)} decisions, "
                 f"{self.size():,} distinct networks ({self.decisions():,} decision vectors)"]
        for c in self.choices:
            lines.append(f"  {c.name:<24} {list(c.options)}")
        for h in self.hyper:
            what = list(h.options) if h.kind == "categorical" else (
                f"{h.kind} in [{h.low}, {h.high}]" + (" (log)" if h.log else ""))
            lines.append(f"  {h.name:<24} {what}")
        return "\n".join(lines)


def _round8(x: float) -> int:
    return max(8, int(round(x / 8)) * 8)


def _is_number(o: Any) -> bool:
    if isinstance(o, bool):
        return True
    if isinstance(o, (int, float)):
        return True
    return isinstance(o, tuple) and all(isinstance(k, int) for k in o)


def _magnitude(o: Any) -> float:
    if isinstance(o, tuple):
        if len(o) == 3 and all(isinstance(v, float) for v in o):  # compound (alpha, beta, gamma)
            return o[0] * o[1] ** 2 * o[2] ** 2
        return max(o) * 100 + len(o)  # kernels: the largest kernel, then the most groups
    return float(o)


def _dedupe(blocks: Iterator[BlockSpec]) -> list[BlockSpec]:
    out: list[BlockSpec] = []
    for b in blocks:
        if b not in out:
            out.append(b)
    return out


def _row(base: BlockSpec, chosen: list[tuple[Choice, Any]], where: str) -> BlockSpec:
    """The base row with the chosen options; fields the (chosen) kind does not take are reset."""
    kind = next((o for c, o in chosen if c.field == "kind"), base.kind)
    rules = BLOCK_KINDS.get(kind)
    if rules is None:
        raise SearchError(f"{where}.kind: unknown block kind {kind!r}; use one of {sorted(BLOCK_KINDS)}")
    values = {c.field: o for c, o in chosen if not c.kinds or kind in c.kinds}
    changes: dict[str, Any] = {"kind": kind}
    for name, value in values.items():
        if name == "filters":
            changes["out_channels"] = round_filters(base.out_channels, value)
        elif name == "out_channels":
            changes["out_channels"] = int(value)
        elif name == "repeats":
            changes["repeats"] = base.repeats + value
        elif name == "kernel_size":
            changes["kernel_size"] = value if isinstance(value, tuple) else (value,)
        elif name != "kind":
            changes[name] = value
    # A field the kind does not take is reset, so one decision vector serves every kind (the
    # depthwise-separable block builds no expansion conv whatever its expand_ratio).
    if kind == "ds" or not rules.expansion:
        changes["expand_ratio"] = 1.0
    if not rules.se:
        changes["se_ratio"] = 0.0
    if not rules.compression:
        changes["input_compression"] = changes["output_compression"] = 0.25
    if not rules.mixconv:
        changes["exp_groups"] = changes["proj_groups"] = 1
    try:
        return dataclasses.replace(base, **changes)
    except SpecError as err:
        chosen = ", ".join(f"{k}={v!r}" for k, v in values.items())
        raise SearchError(f"{where}: the choice {chosen} gives an invalid block: {err}") from None


def _check_choice(space: SearchSpace, c: Choice) -> None:
    where = f"space {space.name!r}, choice {c.name}"
    if not c.options:
        raise SearchError(f"{where}: no options; give at least one")
    if len(set(map(_suggestible, c.options))) != len(c.options):
        raise SearchError(f"{where}: options {list(c.options)} repeat a value")
    if c.stage is None:
        if c.field not in NETWORK_FIELDS:
            raise SearchError(f"{where}: unknown network field {c.field!r}; network choices are "
                              f"{list(NETWORK_FIELDS)} (block fields need 'at: s<stage>.r<row>': {list(ROW_FIELDS)})")
        for o in c.options:
            try:
                space._scale(space.base, {c.field: o})
            except (SpecError, TypeError, ValueError) as err:
                raise SearchError(f"{where}: option {o!r} gives an invalid spec: {err}") from None
        return
    if c.field not in ROW_FIELDS:
        raise SearchError(f"{where}: unknown block field {c.field!r}; block choices are {list(ROW_FIELDS)}")
    if not (0 <= c.stage < len(space.base.stages) and 0 <= (c.row or 0) < len(space.base.stages[c.stage])):
        raise SearchError(f"{where}: the base spec has no block row s{c.stage}.r{c.row} "
                          f"({len(space.base.stages)} stages)")


def _check_hyper(space: SearchSpace, h: HyperChoice) -> None:
    from effml.train.config import ConfigError, load_config

    where = f"space {space.name!r}, hyper-parameter {h.key}"
    if h.kind not in HYPER_KINDS:
        raise SearchError(f"{where}: kind {h.kind!r} is unknown; use one of {list(HYPER_KINDS)}")
    if h.kind == "categorical":
        if not h.options:
            raise SearchError(f"{where}: a categorical hyper-parameter needs options")
        values = list(h.options)
    else:
        if h.low is None or h.high is None or not h.low < h.high:
            raise SearchError(f"{where}: give low < high (got low={h.low}, high={h.high})")
        if h.log and h.low <= 0:
            raise SearchError(f"{where}: a log-scale range needs low > 0 (got {h.low})")
        values = [h.low, h.high] if h.kind == "float" else [int(h.low), int(h.high)]
    for v in values:
        try:
            load_config(None, [f"{h.key}={v}"])
        except ConfigError as err:
            raise SearchError(f"{where}: {h.key}={v} is not a valid training setting: {err}") from None


class ChoiceEntry(BaseModel):
    """One choice of a space file."""

    model_config = _SPACE_FILE
    field: str
    """a block row's field (ROW_FIELDS; give ``at``) or a network field (NETWORK_FIELDS)"""
    options: list[Any]
    """the values the field may take (a list stands for a tuple: kernel_size [3, 5])"""
    at: str | None = None
    """the block row, s<stage>.r<row> (null: a network field)"""
    kinds: list[str] | None = None
    """the block kinds the field applies to (null: all)"""


class HyperEntry(BaseModel):
    """One training hyper-parameter of a space file."""

    model_config = _SPACE_FILE
    key: str
    """a training config key, e.g. optim.lr"""
    kind: str = "categorical"
    """categorical (options), float or int (low, high, log)"""
    options: list[Any] | None = None
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False


class SpaceFile(BaseModel):
    """A space file (JSON or YAML), as ``SearchSpace.to_dict`` writes it."""

    model_config = _SPACE_FILE
    name: str = "space"
    base: str | dict[str, Any]
    """a model name or spec file, or a spec (its JSON as a mapping)"""
    choices: list[ChoiceEntry] | None = None
    hyper: list[HyperEntry] | None = None
    phi: float = 1.0
    """the EfficientNet compound coefficient the compound choice scales by"""


def space_from_dict(data: Any, source: str = "space") -> SearchSpace:
    """Rebuild a space from ``SearchSpace.to_dict`` output (a parsed JSON/YAML document)."""
    from effml.train.config_schema import validation_message
    from effml.zoo.factory import resolve_spec
    from effml.zoo.kinds import spec_from_dict

    try:
        doc = SpaceFile.model_validate(data)
    except ValidationError as err:
        raise SearchError(f"{source}: {validation_message(err, SpaceFile)}") from None
    base = doc.base
    try:
        spec = resolve_spec(base) if isinstance(base, str) else spec_from_dict(base, f"{source}: base")
    except Exception as err:  # noqa: BLE001 - any failure to read the base is one clear message
        raise SearchError(f"{source}: base {base!r} is not a model name or spec: {err}") from None
    if not isinstance(spec, NetworkSpec):
        raise SearchError(f"{source}: base must be an EfficientNet-family network spec, got {type(spec).__name__}")
    choices = []
    for i, c in enumerate(doc.choices or []):
        stage = row = None
        if c.at is not None:
            stage, row = _parse_at(c.at, f"{source}: choices[{i}]")
        options = tuple(tuple(o) if isinstance(o, list) else o for o in c.options)
        choices.append(Choice(c.field, options, stage, row, tuple(c.kinds or ())))
    hyper = [HyperChoice(h.key, h.kind, tuple(h.options or ()), h.low, h.high, h.log) for h in doc.hyper or []]
    return SearchSpace(doc.name, spec, tuple(choices), tuple(hyper), doc.phi)


def _parse_at(at: Any, where: str) -> tuple[int, int]:
    text = str(at)
    try:
        s, r = text.split(".")
        if s[0] != "s" or r[0] != "r":
            raise ValueError
        return int(s[1:]), int(r[1:])
    except (ValueError, IndexError):
        raise SearchError(f"{where}: 'at' is {text!r}; write the block row as s<stage>.r<row>, e.g. s2.r0") from None


def compound_grid(step: float = 0.05, high: float = 1.5, target: float = 2.0,
                  tolerance: float = 0.1) -> tuple[tuple[float, float, float], ...]:
    """EfficientNet's coefficient grid (arXiv 1905.11946, section 3.3): alpha, beta, gamma >= 1 in
    ``step`` increments with alpha * beta^2 * gamma^2 within ``tolerance`` of ``target`` (2)."""
    values = [round(1 + i * step, 4) for i in range(int(round((high - 1) / step)) + 1)]
    return tuple((a, b, g) for a, b, g in itertools.product(values, repeat=3)
                 if abs(a * b * b * g * g - target) <= tolerance)

