"""Quantization-aware training (QAT) for the int8 recipe that ``effml export --int8`` applies.

Fake quantization (Jacob et al., arXiv 1712.05877, section 3) rounds a tensor to the int8 grid
and back in the forward pass. The backward pass treats the rounding as the identity, the
straight-through estimator. Fine-tuning through it lets the weights adapt to the rounding that
the int8 model will do. ``prepare_qat`` simulates the recipe of ``effml.measure.int8.quantize_onnx``
(ONNX Runtime static QDQ quantization):

- weights of every ``nn.Conv2d`` and ``nn.Linear`` (those inside ``MixConv2d`` and ``Conv2dSame``
  included): per output channel, symmetric, int8 in [-127, 127], or [-64, 64] with
  ``reduce_range``, as ORT's ``get_qmin_qmax_for_qType`` gives. The scale is max|w| / 127 of each
  channel. It is a ``torch.nn.utils.parametrize`` parametrization, so the optimizer keeps
  updating the float weight.
- activations: per tensor, asymmetric uint8 [0, 255], over a range that always includes 0, where
  ORT's QDQ graph quantizes them (``_activation_points``): the input of each of those layers, the
  output of each BatchNorm (the output of the conv ORT folds it into; a ReLU or ReLU6 after it is
  fused, and the next layer's input quantizes it), and the outputs of Sigmoid and of SiLU (exported as x * Sigmoid(x): both the
  Sigmoid and the Mul). In training mode the range is a moving-average min/max of the
  batches (averaging constant 0.01, as torch's ``MovingAverageMinMaxObserver``). In eval mode
  it is frozen. ``calibrating`` takes the plain min/max over the batches instead, as ORT's
  MinMax calibration does.

ORT folds BatchNorm into the conv before quantizing, and this module quantizes the unfolded
weight. Both give the same int8 model. Symmetric per-channel quantization is invariant to
scaling an output channel: for any c != 0, fq(c * w) = c * fq(w), because the channel's
scale becomes |c| times larger and round(c * w / (|c| s)) = sign(c) round(w / s). The folded
weight is w * gamma / sqrt(var + eps), one factor per output channel, so quantizing it lands
on the folded grid of the unfolded weight (tests/test_qat.py checks this numerically). The
activations are a partial simulation: the outputs of residual Adds, squeeze-excite's Mul and
ReduceMean, and Hardswish / Hardsigmoid are not quantized here. tests/test_qat.py measures how
closely the eval-mode QAT model follows ORT's int8 model (mean logit gap 0.029 against fp32's
0.083 on its small network; with the conv and linear inputs alone it was 0.074).

BatchNorm statistics are frozen for the last part of a run: ``train.qat_freeze_bn``, a
fraction of the steps, applied by the Trainer. The freeze follows Krishnamoorthi, arXiv
1806.08342, section 3.2: after it the batch statistics stop moving the folded weights, and
training sees the running statistics that inference folds in.

State dicts stay plain. A fake-quantized layer saves and loads its weight as ``weight``, not
``parametrizations.weight.original``, and the observers' ranges are non-persistent buffers
(``observer_state`` reads them for a checkpoint). So a QAT checkpoint loads strictly into
``create_model(spec)``, and a QAT run's weights are plain fp32 weights. ``effml export --int8``
quantizes them with its standard recipe. Its calibration recomputes the activation ranges on
the calibration images, so the ranges learnt in training are not shipped. ``remove_qat``
takes the fake quantization off a model in memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize

from effml.errors import InputError

WEIGHT_QMAX, WEIGHT_QMAX_REDUCED = 127, 64  # ORT: symmetric int8 [-127, 127]; reduce_range [-64, 64]
ACT_QMIN, ACT_QMAX = 0, 255  # uint8 activations (ORT's reduce_range narrows weights only)
AVERAGING = 0.01  # torch.ao MovingAverageMinMaxObserver's averaging_constant
_ORIGINAL = "parametrizations.weight.original"  # where parametrize keeps the float weight


def has_vnni() -> bool:
    """True when this CPU has int8 dot-product instructions (AVX512-VNNI, AVX-VNNI or AMX)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


class WeightFakeQuant(nn.Module):
    """Per-output-channel symmetric int8 fake quantization of a weight (a parametrization)."""

    def __init__(self, qmax: int = WEIGHT_QMAX) -> None:
        super().__init__()
        self.qmax = qmax
        self.enabled = True  # off while ``calibrating``: ORT calibrates the fp32 graph

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return weight
        absmax = weight.detach().flatten(1).abs().amax(1).float()
        # ORT gives a channel of zeros the scale 1 (compute_scale_zp); any scale keeps it zero
        scale = torch.where(absmax > 0, absmax / self.qmax, torch.ones_like(absmax))
        zero = torch.zeros_like(scale, dtype=torch.int32)
        out = torch.fake_quantize_per_channel_affine(weight.float(), scale, zero, 0, -self.qmax, self.qmax)
        return out.to(weight.dtype)

    def extra_repr(self) -> str:
        return f"qmax={self.qmax}"


class ActivationFakeQuant(nn.Module):
    """Per-tensor asymmetric uint8 fake quantization with a min/max observer.

    In training mode the observer takes a moving average. With ``calibrating`` set, it takes a
    running plain min/max (ORT's MinMax). In eval mode it is frozen. A quantizer that has
    observed nothing passes its input through unchanged."""

    def __init__(self, averaging: float = AVERAGING) -> None:
        super().__init__()
        self.averaging = averaging
        self.calibrating = False
        # non-persistent: the model's state_dict stays that of the plain model (observer_state)
        self.register_buffer("min_val", torch.zeros(()), persistent=False)
        self.register_buffer("max_val", torch.zeros(()), persistent=False)
        self.register_buffer("observed", torch.zeros((), dtype=torch.bool), persistent=False)

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        lo, hi = torch.aminmax(x.detach().float())
        if not bool(self.observed):
            self.min_val.copy_(lo)
            self.max_val.copy_(hi)
            self.observed.fill_(True)
        elif self.calibrating:
            torch.minimum(self.min_val, lo, out=self.min_val)
            torch.maximum(self.max_val, hi, out=self.max_val)
        else:
            self.min_val.lerp_(lo, self.averaging)
            self.max_val.lerp_(hi, self.averaging)

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero point) of the current range, as ORT's ``compute_scale_zp`` computes them."""
        lo, hi = self.min_val.clamp(max=0), self.max_val.clamp(min=0)
        scale = (hi - lo) / (ACT_QMAX - ACT_QMIN)
        tiny = torch.finfo(torch.float32).tiny
        zero = torch.where(scale >= tiny, torch.round(ACT_QMIN - lo / scale.clamp(min=tiny)), torch.zeros_like(scale))
        scale = torch.where(scale >= tiny, scale, torch.ones_like(scale))
        return scale.reshape(1), zero.clamp(ACT_QMIN, ACT_QMAX).to(torch.int32).reshape(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:  # ORT calibrates the fp32 graph: observe, do not quantize
            self._observe(x)
            return x
        if self.training:
            self._observe(x)
        elif not bool(self.observed):
            return x
        scale, zero = self.qparams()
        return torch.fake_quantize_per_tensor_affine(x.float(), scale, zero, ACT_QMIN, ACT_QMAX).to(x.dtype)

    def extra_repr(self) -> str:
        return f"uint8, averaging={self.averaging}"


# Hooks are module-level functions that find their quantizers through their ``module`` argument,
# so that a deep copy of a prepared model (the EMA's AveragedModel) quantizes its own tensors.
def _quantize_input(module: nn.Module, args: tuple) -> tuple:
    return (module.input_quant(args[0]), *args[1:])


def _quantize_output(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return module.output_quant(output)


def _quantize_silu(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    # ONNX has no SiLU: the export writes x * Sigmoid(x), and ORT quantizes the Sigmoid and the Mul
    x = args[0]
    return module.output_quant(x * module.sigmoid_quant(torch.sigmoid(x)))


def _plain_keys(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    key = prefix + _ORIGINAL
    if key in state_dict:
        state_dict[prefix + "weight"] = state_dict.pop(key)
        if prefix + "bias" in state_dict:  # the plain model's order: weight, then bias
            state_dict[prefix + "bias"] = state_dict.pop(prefix + "bias")


def _parametrized_keys(module: nn.Module, state_dict: dict, prefix: str, *args: object) -> None:
    key = prefix + "weight"
    if key in state_dict:
        state_dict[prefix + _ORIGINAL] = state_dict.pop(key)


_HOOKS = (_quantize_input, _quantize_output, _quantize_silu, _plain_keys, _parametrized_keys)
_QUANTIZERS = ("input_quant", "output_quant", "sigmoid_quant")
# ORT drops a Relu/Clip after a conv and quantizes the conv's output over the activation's range
# (adjust_tensor_ranges): the clipped output, which the next layer's input quantizer sees
_FOLDED_ACTS = (nn.ReLU, nn.ReLU6)


def _add_quantizer(module: nn.Module, name: str, device: torch.device | None) -> None:
    setattr(module, name, ActivationFakeQuant().to(device))


def _activation_points(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """Where ORT's int8 graph quantizes an activation besides the conv and linear inputs: (module,
    "output" | "act_input" | "silu"). A BatchNorm's output is the output of the conv ORT folds it
    into; a conv with a bias has no BatchNorm after it (effml's blocks)."""
    points: list[tuple[nn.Module, str]] = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            act = getattr(m, "act", None)  # BatchNormAct2d: BN, then its activation module
            if act is None:
                points.append((m, "output"))
            elif not isinstance(act, _FOLDED_ACTS):
                points.append((act, "act_input"))
        elif isinstance(m, nn.Conv2d) and m.bias is not None:
            points.append((m, "output"))
        elif isinstance(m, nn.SiLU):
            points.append((m, "silu"))
        elif isinstance(m, nn.Sigmoid):
            points.append((m, "output"))
    return points


def quantized_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers QAT fake-quantizes: every ``nn.Conv2d`` and ``nn.Linear`` (``Conv2dSame``, the
    convs of a ``MixConv2d``), by name."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def is_qat(model: nn.Module) -> bool:
    """True when ``prepare_qat`` has made ``model`` quantization-aware."""
    return any(isinstance(m, ActivationFakeQuant) for m in model.modules())


def prepare_qat(model: nn.Module, *, reduce_range: bool | None = None) -> nn.Module:
    """Make ``model`` quantization-aware in place (and return it): int8 fake quantization of the
    weights and inputs of its convs and linears, as ``effml export --int8`` will quantize them.

    ``reduce_range``: 7-bit weights, as the export uses on CPUs without VNNI. The default
    follows this CPU (``has_vnni``), as the export's does. Parameters stay the same tensors,
    so an optimizer built before or after keeps working."""
    if is_qat(model):
        raise InputError("the model is already quantization-aware (prepare_qat ran on it); call remove_qat first")
    layers = quantized_layers(model)
    if not layers:
        raise InputError(f"{type(model).__name__} has no Conv2d or Linear layer to quantize")
    if reduce_range is None:
        reduce_range = not has_vnni()
    qmax = WEIGHT_QMAX_REDUCED if reduce_range else WEIGHT_QMAX
    device = next((p.device for p in model.parameters()), None)
    for _, layer in layers:
        parametrize.register_parametrization(layer, "weight", WeightFakeQuant(qmax))
        _add_quantizer(layer, "input_quant", device)
        layer.register_forward_pre_hook(_quantize_input)
        layer.register_state_dict_post_hook(_plain_keys)
        layer.register_load_state_dict_pre_hook(_parametrized_keys)
    for module, point in _activation_points(model):
        if point == "act_input" and not hasattr(module, "input_quant"):
            _add_quantizer(module, "input_quant", device)
            module.register_forward_pre_hook(_quantize_input)
        elif point == "output":
            _add_quantizer(module, "output_quant", device)
            module.register_forward_hook(_quantize_output)
        if point == "silu" or (point == "act_input" and isinstance(module, nn.SiLU)):
            if not hasattr(module, "sigmoid_quant"):
                _add_quantizer(module, "sigmoid_quant", device)
                _add_quantizer(module, "output_quant", device)
                module.register_forward_hook(_quantize_silu)
                module.qat_inplace, module.inplace = module.inplace, False  # the hook reads its input
    return model


def remove_qat(model: nn.Module) -> nn.Module:
    """Take the fake quantization off ``model`` in place (and return it): the plain fp32 model,
    with the float weights that QAT trained."""
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight") and isinstance(
                module.parametrizations.weight[0], WeightFakeQuant):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
            params = dict(module._parameters)  # the plain model's order: weight, then bias
            module._parameters.clear()
            module._parameters.update({"weight": params.pop("weight"), **params})
        for name in _QUANTIZERS:
            if isinstance(getattr(module, name, None), ActivationFakeQuant):
                delattr(module, name)
        if hasattr(module, "qat_inplace"):
            module.inplace = module.qat_inplace
            del module.qat_inplace
        for hooks in (module._forward_pre_hooks, module._forward_hooks, module._state_dict_hooks,
                      module._load_state_dict_pre_hooks):
            for key, hook in list(hooks.items()):
                if getattr(hook, "hook", hook) in _HOOKS:  # load pre-hooks come wrapped (_WrappedHook)
                    del hooks[key]
    return model


@contextlib.contextmanager
def calibrating(model: nn.Module) -> Iterator[None]:
    """Within the block, ``model`` computes in fp32 (no fake quantization) and each activation
    range widens to the plain min/max of what it sees: ORT's MinMax calibration of the fp32 graph.
    Forget earlier ranges with ``reset_ranges``."""
    quants = [m for m in model.modules() if isinstance(m, ActivationFakeQuant)]
    weights = [m for m in model.modules() if isinstance(m, WeightFakeQuant)]
    for q in quants:
        q.calibrating = True
    for w in weights:
        w.enabled = False
    try:
        yield
    finally:
        for q in quants:
            q.calibrating = False
        for w in weights:
            w.enabled = True


def reset_ranges(model: nn.Module) -> None:
    """Forget every observed activation range (the next batch sets them afresh)."""
    for m in model.modules():
        if isinstance(m, ActivationFakeQuant):
            m.observed.fill_(False)


def _observer_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{name}.{key}": buf for name, m in model.named_modules()
            if isinstance(m, ActivationFakeQuant) for key, buf in m.named_buffers(recurse=False)}


def observer_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The observers' ranges by layer name (for a checkpoint: the state_dict leaves them out)."""
    return {key: buf.detach().clone() for key, buf in _observer_buffers(model).items()}


def load_observer_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Restore ranges written by ``observer_state``; the layers must match."""
    buffers = _observer_buffers(model)
    if buffers.keys() != state.keys():
        missing, extra = sorted(buffers.keys() - state.keys()), sorted(state.keys() - buffers.keys())
        raise InputError(f"the QAT observer state does not fit the model (missing {missing[:3]}, "
                         f"unexpected {extra[:3]}); resume with the config the run was trained with")
    with torch.no_grad():
        for key, buf in buffers.items():
            buf.copy_(state[key])
