"""OpenVINO, loaded and compiled the one way effml runs it: the optional import (with its telemetry
hidden), reading an IR or converting an ONNX file, and compiling for the CPU plugin in float32.

``effml.deploy.openvino_runtime`` (export, ``OpenVinoRunner``), ``effml bench`` and latency
measurement (``effml.measure.latency``, runtime ``openvino``) all go through here, so a search's
OpenVINO latency is that of the model ``effml export --openvino`` writes.

OpenVINO is an extra (``pip install "effml[openvino]"``); without it every entry point here raises
``InputError`` saying so. It is imported only when one of them is called.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

from effml.errors import InputError

EXTRA = 'pip install "effml[openvino]"'


def load_openvino() -> ModuleType:
    """The ``openvino`` module, or ``InputError`` naming the extra to install."""
    # OpenVINO sends anonymous usage data to Google Analytics unless the user opted out
    # (docs.openvino.ai/2025/about-openvino/additional-resources/telemetry.html); its conversion
    # code falls back to a silent stub when ``openvino_telemetry`` cannot be imported. effml makes
    # no network access at run time (DESIGN.md), so the package is hidden while OpenVINO loads.
    hide = "openvino" not in sys.modules and "openvino_telemetry" not in sys.modules
    if hide:
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]  # import -> ImportError
    try:
        import openvino
    except ImportError as e:
        raise InputError(f"OpenVINO is not installed ({e}); it is an optional runtime: {EXTRA}") from None
    finally:
        if hide:
            sys.modules.pop("openvino_telemetry", None)
    return openvino


def openvino_available() -> bool:
    """Whether OpenVINO can be loaded here."""
    try:
        load_openvino()
    except InputError:
        return False
    return True


def read_openvino_model(ov: ModuleType, path: Path) -> object:
    """The ``ov.Model`` in an IR, or converted from an ONNX file as ``export_openvino`` converts it
    (so the graph timed from an ONNX file is the one the IR would hold)."""
    if not path.is_file():
        raise InputError(f"OpenVINO model {path} does not exist")
    try:
        return ov.convert_model(str(path)) if path.suffix == ".onnx" else ov.Core().read_model(str(path))
    except Exception as e:  # OpenVINO raises its own RuntimeError / OpConversionFailure types
        raise InputError(f"OpenVINO cannot load {path}: {e}") from None



def compile_openvino(path: str | Path, threads: int | None = None) -> object:
    """An OpenVINO IR (``.xml``) or ONNX file compiled for OpenVINO's CPU plugin in float32, with the
    latency hint and ``threads`` inference threads (default: OpenVINO's)."""
    ov = load_openvino()
    import openvino.properties as props
    import openvino.properties.hint as hints

    path = Path(path)
    model = read_openvino_model(ov, path)
    # The latency hint runs one request on all threads; inference_num_threads caps them
    # (docs.openvino.ai/2025/openvino-workflow/running-inference/inference-devices-and-modes/
    # cpu-device/performance-hint-and-thread-scheduling.html). On CPUs with AVX512_BF16 or AMX the
    # plugin computes in bf16 unless told otherwise (.../inference-devices-and-modes/cpu-device.html,
    # floating-point precision): f32 keeps the outputs within the export's tolerance.
    config: dict[object, object] = {props.hint.performance_mode: hints.PerformanceMode.LATENCY,
                                    props.hint.inference_precision: ov.Type.f32}
    if threads:
        config[props.inference_num_threads] = threads
    try:
        return ov.Core().compile_model(model, "CPU", config)
    except Exception as e:
        raise InputError(f"OpenVINO cannot compile {path} for the CPU: {e}") from None
