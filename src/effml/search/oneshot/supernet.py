"""A one-shot supernet (BigNAS, Yu et al., arXiv 2003.11142, section 3; TuNAS, Bender et al., arXiv
2008.06120, section 3): one set of weights from which every member of a search space (a *child*) is
a slice, op choices included.

A child is a plain spec. Its weights are the supernet's tensors under the same keys, cut to the
child's shapes by one rule: the first channels of every width (output, input, expansion, SE, BN,
the Tucker ranks) and the centre of every kernel. A shallower stage uses its first blocks, whose
keys are the largest's. Where a layer chooses its operation (IBN, fused IBN, Tucker: MnasNet's and
MobileDets' spaces) the supernet holds one weight set per op family at that layer (``op_weights``,
as TuNAS shares one set per op across its kernel and filter choices); where a layer chooses MixConv
kernel groups (MixNet) the groups are channel ranges of one depthwise kernel of the largest size,
each group its own centre. With ``kernels="separate"`` (TuNAS: google-research
``tunas/rematlib/mobile_model_v3.py`` builds one depthwise conv per kernel size of a layer, its 1x1
convs shared) every kernel size a layer offers has its own kxk conv weights instead of the centre
of the largest (``kernel_weights``). So a child runs as the ordinary network built from its spec (on the meta
device, no memory) called with those slices (``torch.func.functional_call``): gradients flow into
the shared tensors, and an extracted child is that same network with the slices copied in, which
loads with no supernet code.

What no slice can express is refused by name: a choice of the network's compound coefficients,
several block rows of one stage with elastic depth, and grouped 1x1 convolutions whose widths change.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from effml.errors import SearchError
from effml.models.builder import BLOCK_MODULES, build_block
from effml.models.network import EfficientNet
from effml.search.spaces.search_space import SearchSpace, _magnitude
from effml.spec import NetworkSpec
from effml.spec.plan import plan

# Block-row fields a supernet shares weights over: slices of one tensor (widths, depth, kernels,
# expansion, SE, Tucker ranks), one weight set per op family (``kind``), or no weights at all (``skip``).
SHARED_ROW_FIELDS = ("kind", "out_channels", "filters", "repeats", "kernel_size", "expand_ratio", "se_ratio",
                     "skip", "input_compression", "output_compression")
SHARED_NETWORK_FIELDS = ("resolution", "stem_channels", "head_channels", "width")
# A child tensor of MixConv group g: ``<conv>.<g>.weight``, a channel range of the shared ``<conv>.weight``.
_MIXCONV_GROUP = re.compile(r"^(?P<conv>.+)\.(?P<group>\d+)\.weight$")
_BLOCK = re.compile(r"^blocks\.(?P<stage>\d+)\.(?P<index>\d+)\.(?P<rest>.+)$")


# A block that runs every op it offers (``MeanOfOps``), in ``block_kinds``-style maps of a child.
ALL_OPS = "*"


class MeanOfOps(nn.ModuleDict):
    """TuNAS's op warm-up (google-research ``tunas/controller.py``, ``increase_ops_probability``):
    every op a block offers, run on the same input, their outputs averaged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([op(x) for op in self.values()]).mean(0)


def slice_weight(tensor: torch.Tensor, shape: torch.Size | tuple[int, ...], key: str = "") -> torch.Tensor:
    """``tensor`` cut to ``shape``: a prefix along every axis except a conv's kernel axes (2, 3), whose
    centre is kept (BigNAS's elastic kernel). A view, so gradients reach ``tensor``."""
    if tuple(tensor.shape) == tuple(shape):
        return tensor
    if tensor.dim() != len(shape) or any(s > t for s, t in zip(shape, tensor.shape)):
        raise SearchError(f"supernet tensor {key or '?'} has shape {tuple(tensor.shape)}, which does not "
                          f"contain the child's {tuple(shape)}: the child is not a member of the supernet's space")
    out = tensor
    for axis, (s, t) in enumerate(zip(shape, tensor.shape)):
        if s == t:
            continue
        if tensor.dim() == 4 and axis >= 2:
            if (t - s) % 2:
                raise SearchError(f"supernet tensor {key}: kernel {t} has no centre {s}x{s} (use odd kernels)")
            start = (t - s) // 2
        else:
            start = 0
        out = out.narrow(axis, start, s)
    return out


def check_shareable(space: SearchSpace) -> None:
    """Raise a ``SearchError`` unless a supernet can hold every member of ``space``: each choice is
    one the supernet shares (``SHARED_ROW_FIELDS``, ``SHARED_NETWORK_FIELDS``), elastic depth has one
    block row per stage, kernels are odd, and grouped 1x1s keep their widths."""
    where = f"space {space.name!r}"
    for c in space.choices:
        fields = SHARED_ROW_FIELDS if c.stage is not None else SHARED_NETWORK_FIELDS
        if c.field not in fields:
            raise SearchError(f"{where}: choice {c.name} cannot share weights; a supernet takes {list(fields)}")
        if c.field == "repeats" and len(space.base.stages[c.stage]) > 1:
            raise SearchError(f"{where}: choice {c.name}: elastic depth (the first d blocks of a stage) needs "
                              f"one block row per stage; stage {c.stage} has {len(space.base.stages[c.stage])}")
    if space.hyper:
        raise SearchError(f"{where}: a supernet takes architecture choices only, not hyper-parameters "
                          f"{[h.key for h in space.hyper]}")
    for spec in (space.base, space.largest().spec, space.smallest().spec):
        for s, stage in enumerate(spec.stages):
            for k in (k for b in stage for k in b.kernel_size):
                if k % 2 == 0:
                    raise SearchError(f"{where}: stage {s} has kernel {k}; shared kernels need odd sizes")
    grouped = _grouped_layers(space.largest().spec)
    if grouped:
        small = _grouped_layers(space.smallest().spec)
        changed = [at for at, widths in grouped.items() if small.get(at) != widths]
        if changed:
            raise SearchError(f"{where}: block {changed[0]} has grouped 1x1 convs (MixNet's exp/proj groups) "
                              f"whose widths change across the space; a prefix cannot slice channel groups. "
                              f"Keep that row's widths fixed or use groups 1")


def _grouped_layers(spec: NetworkSpec) -> dict[str, tuple[int, ...]]:
    """The widths (in, mid, out) of every block with grouped 1x1 convs, by ``s<stage>.b<index>``."""
    out = {}
    for layer in plan(spec).layers:
        if layer.block.exp_groups > 1 or layer.block.proj_groups > 1:
            index = layer.index - _first_index(spec, layer.stage)
            out[f"s{layer.stage}.b{index}"] = (layer.in_channels, *layer.mid_channels, layer.out_channels)
    return out


def check_elastic(space: SearchSpace) -> None:
    """Raise a ``SearchError`` unless ``space`` is elastic, as BigNAS's sandwich rule needs: every
    member a slice of its largest member, which is the supernet itself (no op choices, no MixConv
    kernel groups)."""
    check_shareable(space)
    if storage_spec(space) != space.largest().spec:
        ops = [c.name for c in space.choices if c.field == "kind" or (
            c.field == "kernel_size" and any(isinstance(o, tuple) and len(o) > 1 for o in c.options))]
        raise SearchError(f"space {space.name!r} is not elastic: {', '.join(ops) or 'a choice'} picks operations "
                          f"(one weight set per op), so its members are not slices of its largest one, which the "
                          f"sandwich rule trains; search it with search.strategy=tunas")


def storage_spec(space: SearchSpace, kind: str | None = None) -> NetworkSpec:
    """The network whose tensors hold the shared weights: every size-like decision at its largest, a
    layer's operation ``kind`` where the layer offers it (its first option elsewhere, and with
    ``kind`` None), and every depthwise kernel a single one of the largest size the layer can take
    (MixConv groups are channel ranges of it). For a space without op and MixConv choices this is
    ``space.largest().spec``."""
    picked = {}
    for c in space.choices:
        if c.field == "kind":
            picked[c.name] = kind if kind in c.options else c.options[0]
        elif c.field == "skip":
            picked[c.name] = space.base.stages[c.stage][c.row].skip
        else:
            picked[c.name] = max(c.options, key=_magnitude)
    spec = space._apply(picked)
    kernels: dict[tuple[int, int], list[tuple[int, tuple[str, ...]]]] = {}
    for c in space.choices:
        if c.field == "kernel_size":
            sizes = [k for o in c.options for k in (o if isinstance(o, tuple) else (o,))]
            kernels.setdefault((c.stage, c.row), []).append((max(sizes), c.kinds))
    stages = []
    for s, stage in enumerate(spec.stages):
        rows = []
        for r, b in enumerate(stage):
            offered = [k for k, kinds in kernels.get((s, r), []) if not kinds or b.kind in kinds]
            largest = max(*offered, *b.kernel_size) if offered else max(b.kernel_size)
            rows.append(dataclasses.replace(b, kernel_size=(largest,)) if b.kernel_size != (largest,) else b)
        stages.append(tuple(rows))
    return spec.replace(stages=tuple(stages))


def block_kinds(spec: NetworkSpec) -> dict[tuple[int, int], str]:
    """Every built block's operation by (stage, index in the stage), repeats expanded."""
    kinds = {}
    for s, stage in enumerate(spec.stages):
        index = 0
        for b in stage:
            for _ in range(b.repeats):
                kinds[(s, index)] = b.kind
                index += 1
    return kinds


def op_positions(space: SearchSpace) -> dict[tuple[int, int], tuple[str, ...]]:
    """The blocks whose operation is a choice, by (stage, index in the stage), with the operations
    offered; a row's repeats all share its choice."""
    offered = {(c.stage, c.row): tuple(c.options) for c in space.choices if c.field == "kind"}
    largest = storage_spec(space)
    positions = {}
    for s, stage in enumerate(largest.stages):
        index = 0
        for r, b in enumerate(stage):
            for _ in range(b.repeats):
                if (s, r) in offered:
                    positions[(s, index)] = offered[(s, r)]
                index += 1
    return positions


class MetaModules:
    """Networks built from their specs on the meta device (shapes and forward code, no storage):
    the children a supernet runs with ``functional_call``, the last ``size`` kept."""

    def __init__(self, build: Callable[[Any], nn.Module], size: int) -> None:
        self.build, self.size = build, size
        self._kept: OrderedDict[Any, nn.Module] = OrderedDict()

    def __call__(self, spec: Any) -> nn.Module:
        module = self._kept.get(spec)
        if module is None:
            with torch.device("meta"):
                module = self.build(spec)
            self._kept[spec] = module
            if len(self._kept) > self.size:
                self._kept.popitem(last=False)
        else:
            self._kept.move_to_end(spec)
        return module


class Supernet(EfficientNet):
    """The shared weights of a search space, whose forward pass can run any member.

    ``supernet(x)`` runs the storage network (``storage_spec``: for a BigNAS space, the largest
    child); ``supernet(x, child=spec)`` runs ``spec`` on the slices of the shared weights, resizing
    ``x`` to the child's resolution first. ``extract(spec)`` gives the child as an ordinary
    ``EfficientNet`` with its weights copied out. Parameter names are the ordinary network's (timm's),
    so a BigNAS supernet's checkpoint is also its largest child's; the weights of the other op
    families sit under ``op_weights.<kind>.s<stage>b<index>``, and with ``kernels="separate"`` the
    smaller kernels' weights under ``kernel_weights`` (``kernel_key``).
    """

    # children leave parameters unused (a shallow stage's last blocks, other ops): DDP must look for them
    ddp_find_unused_parameters = True

    def __init__(self, space: SearchSpace, *, kernels: str = "shared", cache_size: int = 128,
                 **largest: float | None) -> None:
        """``kernels``: "shared" (BigNAS: a smaller kernel is the centre of the largest) or "separate"
        (TuNAS: one kxk weight per kernel size a layer offers). ``largest``: spec fields of the
        storage network (dropout, drop_path, bn_momentum, bn_eps; None keeps the space's)."""
        if kernels not in ("shared", "separate"):
            raise SearchError(f"supernet kernels={kernels!r}: use 'shared' (BigNAS) or 'separate' (TuNAS)")
        check_shareable(space)
        changes = {k: v for k, v in largest.items() if v is not None}
        super().__init__(storage_spec(space).replace(**changes))
        self.space = space
        self._children = MetaModules(EfficientNet, cache_size)
        self._primary = block_kinds(self.spec)
        self.op_positions = op_positions(space)
        self.op_weights = nn.ModuleDict()
        for kind in sorted({k for ks in self.op_positions.values() for k in ks}):
            at = [(s, i) for (s, i), ks in self.op_positions.items() if kind in ks and self._primary[(s, i)] != kind]
            if at:
                family = EfficientNet(storage_spec(space, kind).replace(**changes))
                self.op_weights[kind] = nn.ModuleDict({f"s{s}b{i}": family.blocks[s][i] for s, i in at})
        self.kernel_weights = nn.ParameterDict(_separate_kernels(space, changes) if kernels == "separate" else {})

    def child_spec(self, spec: NetworkSpec, *, regularize: bool = False) -> NetworkSpec:
        """``spec`` with the supernet's conventions (classes, BN, padding) and, unless ``regularize``,
        no dropout and no drop path: BigNAS regularizes only the largest child (section 3.1)."""
        same = dict(num_classes=self.spec.num_classes, in_channels=self.spec.in_channels,
                    bn_eps=self.spec.bn_eps, bn_momentum=self.spec.bn_momentum, padding=self.spec.padding)
        reg = (dict(dropout=self.spec.dropout, drop_path=self.spec.drop_path) if regularize
               else dict(dropout=0.0, drop_path=0.0))
        return spec.replace(**same, **reg)

    def _module(self, spec: NetworkSpec) -> nn.Module:
        """The child's network on the meta device (shapes and forward code, no storage), cached."""
        return self._children(spec)

    def shared_name(self, name: str, kinds: Mapping[tuple[int, int], str]) -> str:
        """The supernet tensor that holds child tensor ``name`` (a child whose blocks have the
        operations ``kinds``, ``block_kinds(child)``): the same name, or the op family's copy. In a
        child with every op at a block (``all_ops``), ``blocks.<s>.<i>.<kind>.<rest>`` is op ``kind``'s."""
        m = _BLOCK.match(name)
        if m is None:
            return name
        at, rest = (int(m["stage"]), int(m["index"])), m["rest"]
        kind = kinds.get(at)
        if kind == ALL_OPS:
            kind, rest = rest.split(".", 1)
            if kind == self._primary.get(at):
                return f"blocks.{at[0]}.{at[1]}.{rest}"
        if at not in self.op_positions or kind == self._primary.get(at):
            return name
        if kind not in self.op_positions[at]:
            raise SearchError(f"child block s{at[0]}.b{at[1]} is a {kind!r} block, which space "
                              f"{self.space.name!r} does not offer there (options: {list(self.op_positions[at])})")
        return f"op_weights.{kind}.s{at[0]}b{at[1]}.{rest}"

    def child_weights(self, spec: NetworkSpec, module: nn.Module | None = None,
                      kinds: Mapping[tuple[int, int], str] | None = None) -> dict[str, torch.Tensor]:
        """The child's parameters and buffers by name: views into the supernet's tensors (``module``
        and ``kinds``: a child network other than ``spec``'s own, e.g. with every op at some blocks)."""
        own = dict(self.named_parameters())
        own.update(self.named_buffers())
        module = self._module(spec) if module is None else module
        kinds = block_kinds(spec) if kinds is None else kinds
        weights = {}
        for name, t in [*module.named_parameters(), *module.named_buffers()]:
            source = self.shared_name(name, kinds)
            key = self._kernel_key(name, t, kinds) if self.kernel_weights else None
            if key is not None:
                weights[name] = slice_weight(self.kernel_weights[key], t.shape, name)
                continue
            if source in own:
                weights[name] = slice_weight(own[source], t.shape, name)
                continue
            group = _MIXCONV_GROUP.match(source)
            whole = own.get(f"{group['conv']}.weight") if group else None
            if whole is None:
                raise SearchError(f"child tensor {name} has no supernet counterpart: the child is not a "
                                  f"member of space {self.space.name!r}")
            # MixConv group g: its channel range of the one shared depthwise kernel, then the centre
            mix = module.get_submodule(name.rsplit(".", 2)[0])
            start = sum(mix.splits[:int(group["group"])])
            if whole.shape[1] != 1 or start + t.shape[0] > whole.shape[0]:
                raise SearchError(f"child tensor {name} (MixConv group) does not fit supernet tensor "
                                  f"{group['conv']}.weight {tuple(whole.shape)}")
            weights[name] = slice_weight(whole.narrow(0, start, t.shape[0]), t.shape, name)
        return weights

    def _kernel_key(self, name: str, t: torch.Tensor, kinds: Mapping[tuple[int, int], str]) -> str | None:
        """The ``kernel_weights`` entry that holds child tensor ``name`` (a kxk conv weight of a block
        at a layer with its own weights per kernel size), or None."""
        m = _BLOCK.match(name)
        if m is None or t.dim() != 4 or t.shape[-1] == 1:
            return None
        at, rest = (int(m["stage"]), int(m["index"])), m["rest"]
        kind = kinds.get(at)
        if kind == ALL_OPS:
            kind, rest = rest.split(".", 1)
        key = kernel_key(kind, at, int(t.shape[-1]), rest)
        return key if key in self.kernel_weights else None

    def with_all_ops(self, spec: NetworkSpec, all_ops: Mapping[tuple[int, int], Mapping[str, NetworkSpec]],
                     base: nn.Module | None = None) -> tuple[nn.Module, dict[tuple[int, int], str]]:
        """The child's network on the meta device (``base``: another network with the same stem and
        blocks, e.g. a detector's backbone) with ``MeanOfOps`` at the blocks of ``all_ops`` (per
        block, the member whose block there is each op), and its blocks' kinds."""
        module = copy.deepcopy(self._module(spec) if base is None else base)
        kinds = block_kinds(spec)
        for (s, i), variants in all_ops.items():
            ops = {}
            for kind, variant in variants.items():
                first = _first_index(variant, s)
                layer = next(x for x in plan(variant).layers if x.stage == s and x.index - first == i)
                with torch.device("meta"):
                    ops[kind] = build_block(layer, variant, static_size=True)
            module.blocks[s][i] = MeanOfOps(ops)
            kinds[(s, i)] = ALL_OPS
        return module, kinds

    def forward(self, x: torch.Tensor, child: NetworkSpec | None = None, *,
                all_ops: Mapping[tuple[int, int], Mapping[str, NetworkSpec]] | None = None,
                keep_buffers: bool = False) -> torch.Tensor:
        """The storage network, or ``child`` on the shared weights. ``all_ops``: blocks that run every
        op they offer, averaged (TuNAS's op warm-up; per block (stage, index), the member whose block
        there is each op). ``keep_buffers``: BatchNorm in training mode leaves the shared running
        statistics as they were (a reward on batch statistics)."""
        if child is None:
            return super().forward(x)
        x = resize_to(x, child.resolution)
        if child == self.spec and not all_ops and not keep_buffers:  # the storage network: no slicing
            return super().forward(x)
        if all_ops:
            module, kinds = self.with_all_ops(child, all_ops)
            weights = self.child_weights(child, module, kinds)
        else:
            module = self._module(child)
            weights = self.child_weights(child)
        if keep_buffers:
            weights.update({name: weights[name].clone() for name, _ in module.named_buffers()})
        self._mirror_modes(module)
        return functional_call(module, weights, (x,), strict=True)

    def _mirror_modes(self, module: nn.Module) -> None:
        mirror_modes(self, module)

    @torch.no_grad()
    def extract(self, spec: NetworkSpec) -> EfficientNet:
        """The child as an ordinary network with its slices copied (on the supernet's device). It is
        built on the meta device and takes the copies as its tensors: no initialisation that the
        copies would overwrite (measured: 0.05 instead of 0.18 CPU s for one random MnasNet-space child)."""
        spec = self.child_spec(spec)
        with torch.device("meta"):
            child = EfficientNet(spec)
        state = {k: v.detach().clone() for k, v in self.child_weights(spec).items()}
        child.load_state_dict(state, strict=True, assign=True)
        self._mirror_modes(child)
        return child

    @torch.no_grad()
    def load_child_buffers(self, spec: NetworkSpec, child: nn.Module) -> None:
        """Write ``child``'s BatchNorm statistics (e.g. after calibration) into the supernet's slices."""
        weights = self.child_weights(self.child_spec(spec))
        for name, b in child.named_buffers():
            weights[name].copy_(b)


def mirror_modes(supernet: nn.Module, module: nn.Module) -> None:
    """Give each submodule of a child ``module`` the train/eval mode of the ``supernet``'s module of
    the same name (a frozen BatchNorm, ``model.freeze_bn``, stays frozen in every child); the other
    op families' blocks follow the supernet's mode."""
    own = dict(supernet.named_modules())  # a dict of a few hundred entries: cheap next to a forward pass
    for name, m in module.named_modules():
        m.training = own[name].training if name in own else supernet.training


def kernel_key(kind: str, at: tuple[int, int], kernel: int, rest: str) -> str:
    """The ``kernel_weights`` name of block ``at``'s (stage, index) tensor ``rest`` (e.g.
    ``conv_dw.weight``) for op ``kind`` at kernel size ``kernel``."""
    return f"{kind}_s{at[0]}b{at[1]}_k{kernel}_{rest.replace('.', '_')}"


def _separate_kernels(space: SearchSpace, changes: Mapping[str, float]) -> dict[str, nn.Parameter]:
    """TuNAS's per-kernel weights: for every layer whose kernel size is a choice (one kernel per
    layer, not MixConv groups) and every op family there, the kxk conv weights of each offered size
    but the largest (which the storage network holds), initialised as the builder initialises them."""
    kernel_rows: dict[tuple[int, int], set[int]] = {}
    for c in space.choices:
        if c.field == "kernel_size":
            sizes = {o[0] if isinstance(o, tuple) else o for o in c.options
                     if not (isinstance(o, tuple) and len(o) > 1)}
            kernel_rows.setdefault((c.stage, c.row), set()).update(sizes)
    offered = sorted({k for c in space.choices if c.field == "kind" for k in c.options})
    out: dict[str, nn.Parameter] = {}
    for kind in [None, *offered]:  # None: the rows' own kinds (the first option where a row chooses)
        storage = storage_spec(space, kind).replace(**changes)
        for size in sorted({k for sizes in kernel_rows.values() for k in sizes}):
            stages = tuple(tuple(dataclasses.replace(b, kernel_size=(size,))
                                 if (s, r) in kernel_rows and size in kernel_rows[(s, r)] else b
                                 for r, b in enumerate(stage)) for s, stage in enumerate(storage.stages))
            variant = EfficientNet(storage.replace(stages=stages))
            for (s, r), sizes in kernel_rows.items():
                block = storage.stages[s][r]
                if size not in sizes or block.kernel_size == (size,):
                    continue
                first = sum(b.repeats for b in storage.stages[s][:r])
                for i in range(first, first + block.repeats):
                    for rest, w in variant.blocks[s][i].named_parameters():
                        if w.dim() == 4 and w.shape[-1] == size and size > 1:
                            out[kernel_key(block.kind, (s, i), size, rest)] = nn.Parameter(w.detach().clone())
    return out


def resize_to(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """A batch resized to ``resolution`` (square), anti-aliased bilinear; unchanged when it fits."""
    if tuple(x.shape[-2:]) == (resolution, resolution):
        return x
    return F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False,
                         antialias=True)


@torch.no_grad()
def zero_init_last_bn(model: nn.Module) -> int:
    """Zero the gamma of the last BatchNorm of every residual block (every op family's), so each
    starts as the identity (BigNAS section 3.1, after Goyal et al., arXiv 1706.02677); the number of
    blocks changed."""
    last_bn = {spec.cls: spec.fuse_pairs[-1][1] for spec in BLOCK_MODULES.values()}
    changed = 0
    for block in model.modules():
        if type(block) in last_bn and getattr(block, "has_skip", False):
            getattr(block, last_bn[type(block)]).weight.zero_()
            changed += 1
    return changed


def _first_index(spec: NetworkSpec, stage: int) -> int:
    return sum(b.repeats for st in spec.stages[:stage] for b in st)
