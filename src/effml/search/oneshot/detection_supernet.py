"""A detection supernet: SSDLite over a backbone search space, as MobileDets searched its detectors
(Xiong et al., arXiv 2004.14525, section 5: TuNAS over one SSDLite whose backbone layers choose
IBN, fused IBN or Tucker blocks, the head fixed).

The backbone's shared weights are a ``Supernet`` of the space (op families, slices, separate
kernels: everything a classification supernet shares); the SSDLite extra maps and predictors are
one set, cut to a child's backbone widths as leading input channels (the same rule as the
backbone's). A child is the ordinary SSDLite of ``detector_spec("ssdlite", member)``, the detector a
black-box search with ``search.detector: ssdlite`` trains for that member, so ``effml
train|eval|detect|export`` take it as it is; ``extract`` copies its slices out, and the copy gives
the supernet child's outputs.

Parameter names are the SSDLite's (``backbone.*``, ``extras.*``, ``box_net.*``, ``class_net.*``), the
other op families' backbone weights under ``backbone.op_weights``. A space whose members differ in
resolution is refused: SSDLite's anchors follow the input size.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping

import torch
from torch import nn
from torch.func import functional_call

from effml.detection.ssdlite import SSDLite, SSDLiteSpec, init_backbone_he
from effml.errors import SearchError
from effml.search.oneshot.supernet import (
    MetaModules,
    Supernet,
    block_kinds,
    mirror_modes,
    resize_to,
    slice_weight,
)
from effml.search.spaces.search_space import SearchSpace
from effml.search.study.detection_proxy import detector_spec
from effml.spec import NetworkSpec

# The classification head of the backbone supernet: a detector taps the backbone's stages instead.
_UNUSED_HEAD = ("conv_head", "bn2", "classifier")


class SSDLiteSupernet(nn.Module):
    """The shared weights of SSDLite over every backbone of ``space``.

    ``supernet(x)`` runs the storage detector (every backbone decision at its largest, the first op
    where a layer chooses one); ``supernet(x, child=spec)`` runs a member (a backbone ``NetworkSpec``
    or its ``SSDLiteSpec``) on the slices; both return SSDLite's ``(class_outputs, box_outputs)``.
    ``anchors``, ``box_coder`` and ``num_classes`` are every child's, so the detection objective and
    predictor take the supernet as they take an SSDLite."""

    ddp_find_unused_parameters = True  # a child leaves the other op families' weights unused

    def __init__(self, space: SearchSpace, *, kernels: str = "shared", cache_size: int = 32,
                 **largest: float | None) -> None:
        """``kernels`` and ``largest``: as ``Supernet``'s (the backbone's)."""
        super().__init__()
        resolutions = {space.smallest().spec.resolution, space.largest().spec.resolution, space.base.resolution}
        if len(resolutions) > 1:
            raise SearchError(f"space {space.name!r}: a detection supernet needs one resolution (SSDLite's anchors "
                              f"follow the input size); its members take {sorted(resolutions)}")
        self.space = space
        self.backbone = Supernet(space, kernels=kernels, **largest)
        for name in _UNUSED_HEAD:
            setattr(self.backbone, name, nn.Identity())
        init_backbone_he(self.backbone)  # SSDLite's backbone initialisation, every op family's
        for w in self.backbone.kernel_weights.values():
            nn.init.kaiming_normal_(w, mode="fan_in", nonlinearity="relu")
        self.spec: SSDLiteSpec = self.child_spec(self.backbone.spec)
        storage = SSDLite(self.spec)  # its extras and predictors (initialised as SSDLite's); its backbone is dropped
        self.extras, self.box_net, self.class_net = storage.extras, storage.box_net, storage.class_net
        self.box_coder = storage.box_coder
        self._children = MetaModules(SSDLite, cache_size)

    @property
    def num_classes(self) -> int:
        """Object classes of every child."""
        return self.spec.num_classes

    def anchors(self, height: int, width: int) -> torch.Tensor:
        """Every child's anchors for an input of this size (SSDLite's)."""
        return self._module(self.spec).anchors(height, width)

    def child_spec(self, spec: NetworkSpec | SSDLiteSpec, *, regularize: bool = False) -> SSDLiteSpec:
        """The SSDLite of member ``spec`` (a backbone, or an SSDLite whose head is this supernet's),
        with the supernet's conventions (``Supernet.child_spec``)."""
        backbone = spec.backbone if isinstance(spec, SSDLiteSpec) else spec
        if not isinstance(backbone, NetworkSpec):
            raise SearchError(f"a detection supernet's child is a backbone NetworkSpec or an SSDLiteSpec, "
                              f"not {type(spec).__name__}")
        child = detector_spec("ssdlite", self.backbone.child_spec(backbone, regularize=regularize))
        if isinstance(spec, SSDLiteSpec):
            mine, theirs = (dataclasses.replace(s, backbone=child.backbone, num_classes=child.num_classes)
                            for s in (child, spec))
            if mine != theirs:
                diff = [f.name for f in dataclasses.fields(SSDLiteSpec) if getattr(mine, f.name) != getattr(theirs, f.name)]
                raise SearchError(f"the SSDLite's {', '.join(diff)} differ from the supernet's: only the backbone is "
                                  f"searched, the head is SSDLite's of search.detector=ssdlite")
        return child

    def _module(self, spec: SSDLiteSpec) -> SSDLite:
        """The child detector on the meta device (shapes and forward code, no storage), cached."""
        return self._children(spec)

    def child_weights(self, spec: SSDLiteSpec, module: nn.Module | None = None,
                      kinds: Mapping[tuple[int, int], str] | None = None) -> dict[str, torch.Tensor]:
        """The child detector's parameters and buffers by name: views into the supernet's tensors
        (``module`` and ``kinds``: as ``Supernet.child_weights``, for the backbone)."""
        module = self._module(spec) if module is None else module
        backbone = self.backbone.child_weights(spec.backbone, module.backbone,
                                               block_kinds(spec.backbone) if kinds is None else kinds)
        weights = {f"backbone.{name}": t for name, t in backbone.items()}
        own = dict(self.named_parameters())
        own.update(self.named_buffers())
        for name, t in [*module.named_parameters(), *module.named_buffers()]:
            if not name.startswith("backbone."):
                weights[name] = slice_weight(own[name], t.shape, name)
        return weights

    def forward(self, x: torch.Tensor, child: NetworkSpec | SSDLiteSpec | None = None, *,
                all_ops: Mapping[tuple[int, int], Mapping[str, NetworkSpec]] | None = None,
                keep_buffers: bool = False) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The storage detector, or ``child`` on the shared weights; ``all_ops`` and
        ``keep_buffers`` as ``Supernet.forward`` (``all_ops``: backbone members or their SSDLites)."""
        if child is None:
            spec = self.spec
        elif isinstance(child, SSDLiteSpec):
            spec = child  # a child_spec already (as a TuNAS step passes it): not checked again each step
        else:
            spec = self.child_spec(child)
        x = resize_to(x, spec.resolution)
        module: nn.Module = self._module(spec)
        kinds = None
        if all_ops:
            members = {at: {k: v.backbone if isinstance(v, SSDLiteSpec) else v for k, v in variants.items()}
                       for at, variants in all_ops.items()}
            backbone, kinds = self.backbone.with_all_ops(spec.backbone, members, base=module.backbone)
            module = copy.copy(module)  # the cached child keeps its own backbone
            module._modules = {**module._modules, "backbone": backbone}
        weights = self.child_weights(spec, module, kinds)
        if keep_buffers:
            weights.update({name: weights[name].clone() for name, _ in module.named_buffers()})
        mirror_modes(self, module)
        return functional_call(module, weights, (x,), strict=True)

    @torch.no_grad()
    def extract(self, spec: NetworkSpec | SSDLiteSpec) -> SSDLite:
        """The child as an ordinary ``SSDLite`` with its slices copied (on the supernet's device)."""
        spec = self.child_spec(spec)
        with torch.device("meta"):
            child = SSDLite(spec)
        state = {k: v.detach().clone() for k, v in self.child_weights(spec).items()}
        child.load_state_dict(state, strict=True, assign=True)
        mirror_modes(self, child)
        return child

    @torch.no_grad()
    def load_child_buffers(self, spec: NetworkSpec | SSDLiteSpec, child: nn.Module) -> None:
        """Write ``child``'s BatchNorm statistics (e.g. after calibration) into the supernet's slices."""
        weights = self.child_weights(self.child_spec(spec))
        for name, b in child.named_buffers():
            weights[name].copy_(b)
