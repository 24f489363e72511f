"""BigNAS's supernet (Yu et al., arXiv 2003.11142, section 3): one set of weights, the largest member
of a search space, from which every member (a *child*) is a slice.

A child is a plain spec. Its weights are the supernet's tensors under the same keys, cut to the
child's shapes by one rule: the first channels of every width (output, input, expansion, SE, BN)
and the centre of every kernel. A shallower stage uses its first blocks, whose keys are the
largest's. So a child runs as the ordinary network built from its spec (on the meta device, no
memory) called with those slices (``torch.func.functional_call``): gradients flow into the shared
tensors, and an extracted child is that same network with the slices copied in, which loads with
no supernet code.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from effml.errors import SearchError
from effml.models.builder import BLOCK_MODULES
from effml.models.network import EfficientNet
from effml.search.spaces.search_space import SearchSpace
from effml.spec import NetworkSpec
from effml.spec.plan import plan

# Block-row fields whose options a supernet can slice; the others change which parameters exist
# (a block kind, MixConv groups) and are not elastic.
ELASTIC_ROW_FIELDS = ("out_channels", "filters", "repeats", "kernel_size", "expand_ratio", "se_ratio")
ELASTIC_NETWORK_FIELDS = ("resolution", "stem_channels", "head_channels", "width")


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


def check_elastic(space: SearchSpace) -> None:
    """Raise a ``SearchError`` unless every member of ``space`` is a slice of its largest member."""
    where = f"space {space.name!r}"
    for c in space.choices:
        fields = ELASTIC_ROW_FIELDS if c.stage is not None else ELASTIC_NETWORK_FIELDS
        if c.field not in fields:
            raise SearchError(f"{where}: choice {c.name} is not elastic; a supernet slices {list(fields)}")
        if c.field == "repeats" and len(space.base.stages[c.stage]) > 1:
            raise SearchError(f"{where}: choice {c.name}: elastic depth (the first d blocks of a stage) needs "
                              f"one block row per stage; stage {c.stage} has {len(space.base.stages[c.stage])}")
    if space.hyper:
        raise SearchError(f"{where}: a supernet takes architecture choices only, not hyper-parameters "
                          f"{[h.key for h in space.hyper]}")
    for s, stage in enumerate(space.base.stages):
        for r, b in enumerate(stage):
            if len(b.kernel_size) > 1 or b.exp_groups > 1 or b.proj_groups > 1:
                raise SearchError(f"{where}: row s{s}.r{r} has MixConv kernels or grouped 1x1s, whose channel "
                                  f"groups a prefix cannot slice; use one kernel and groups 1")
        for b in stage:
            for k in b.kernel_size:
                if k % 2 == 0:
                    raise SearchError(f"{where}: kernel {k} is even; elastic kernels need odd sizes")


class Supernet(EfficientNet):
    """The largest member of an elastic space, whose forward pass can run any member instead.

    ``supernet(x)`` is the largest child; ``supernet(x, child=spec)`` runs ``spec`` on the slices
    of the shared weights, resizing ``x`` to the child's resolution first. ``extract(spec)`` gives
    the child as an ordinary ``EfficientNet`` with its weights copied out. Parameter names are the
    ordinary network's (timm's), so the supernet's checkpoint is also the largest child's.
    """

    # children leave parameters unused (a shallow stage's last blocks): DDP must look for them
    ddp_find_unused_parameters = True

    def __init__(self, space: SearchSpace, *, cache_size: int = 128, **largest: float | None) -> None:
        """``largest``: spec fields of the largest child (dropout, drop_path, bn_momentum, bn_eps;
        None keeps the space's)."""
        check_elastic(space)
        changes = {k: v for k, v in largest.items() if v is not None}
        super().__init__(space.largest().spec.replace(**changes))
        self.space = space
        self._children: OrderedDict[NetworkSpec, nn.Module] = OrderedDict()
        self._cache_size = cache_size

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
        module = self._children.get(spec)
        if module is None:
            with torch.device("meta"):
                module = EfficientNet(spec)
            self._children[spec] = module
            if len(self._children) > self._cache_size:
                self._children.popitem(last=False)
        else:
            self._children.move_to_end(spec)
        return module

    def child_weights(self, spec: NetworkSpec) -> dict[str, torch.Tensor]:
        """The child's parameters and buffers by name: views into the supernet's tensors."""
        own = dict(self.named_parameters())
        own.update(self.named_buffers())
        module = self._module(spec)
        weights = {}
        for name, t in [*module.named_parameters(), *module.named_buffers()]:
            if name not in own:
                raise SearchError(f"child tensor {name} has no supernet counterpart: the child is not a "
                                  f"member of space {self.space.name!r}")
            weights[name] = slice_weight(own[name], t.shape, name)
        return weights

    def forward(self, x: torch.Tensor, child: NetworkSpec | None = None) -> torch.Tensor:
        if child is None:
            return super().forward(x)
        x = resize_to(x, child.resolution)
        if child == self.spec:  # the largest child: the network's own forward, no slicing
            return super().forward(x)
        module = self._module(child)
        self._mirror_modes(module)
        return functional_call(module, self.child_weights(child), (x,), strict=True)

    def _mirror_modes(self, module: nn.Module) -> None:
        """Give each submodule of a child the train/eval mode of the supernet's module of the same name
        (a frozen BatchNorm, ``model.freeze_bn``, stays frozen in every child)."""
        own = dict(self.named_modules())  # a dict of a few hundred entries: cheap next to a forward pass
        for name, m in module.named_modules():
            m.training = own[name].training if name in own else self.training

    @torch.no_grad()
    def extract(self, spec: NetworkSpec) -> EfficientNet:
        """The child as an ordinary network with its slices copied (on the supernet's device)."""
        spec = self.child_spec(spec)
        device = next(self.parameters()).device
        child = EfficientNet(spec).to(device)
        state = {k: v.detach().clone() for k, v in self.child_weights(spec).items()}
        child.load_state_dict(state, strict=True)
        self._mirror_modes(child)
        return child

    @torch.no_grad()
    def load_child_buffers(self, spec: NetworkSpec, child: nn.Module) -> None:
        """Write ``child``'s BatchNorm statistics (e.g. after calibration) into the supernet's slices."""
        weights = self.child_weights(self.child_spec(spec))
        for name, b in child.named_buffers():
            weights[name].copy_(b)


def resize_to(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """A batch resized to ``resolution`` (square), anti-aliased bilinear; unchanged when it fits."""
    if tuple(x.shape[-2:]) == (resolution, resolution):
        return x
    return F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False,
                         antialias=True)


@torch.no_grad()
def zero_init_last_bn(model: EfficientNet) -> int:
    """Zero the gamma of the last BatchNorm of every residual block, so each starts as the identity
    (BigNAS section 3.1, after Goyal et al., arXiv 1706.02677); the number of blocks changed."""
    changed = 0
    for layer in plan(model.spec).layers:
        if not layer.residual:
            continue
        block = model.blocks[layer.stage][layer.index - _first_index(model.spec, layer.stage)]
        bn = getattr(block, BLOCK_MODULES[layer.kind].fuse_pairs[-1][1])
        bn.weight.zero_()
        changed += 1
    return changed


def _first_index(spec: NetworkSpec, stage: int) -> int:
    return sum(b.repeats for st in spec.stages[:stage] for b in st)

