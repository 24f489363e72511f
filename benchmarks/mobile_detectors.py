"""effml SSDLite + MobileDet-CPU vs torchvision SSDLite + MobileNetV3-Large, both at 320 px, CPU.

The MobileDets paper claims MobileDet-CPU runs at a latency comparable to MobileNetV3 + SSDLite
(tensorflow/models tf1_detection_zoo.md: 113 vs 119 ms on a Pixel 1 CPU). Both networks have random weights
(torchvision: ``ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)``, 91 classes;
effml: ``ssdlite_mobiledet_cpu``, 90 classes). Timed: the *network* only -- the raw per-anchor
class and box outputs, without input normalisation/resizing, anchor decoding or NMS
(torchvision: ``model.backbone`` + ``model.head``; effml: the detector's forward) -- at batch 1,
same input, same threads, interleaved rounds, p50 latency:
- eager PyTorch (and effml with BN folded, ``fuse_for_inference``);
- ONNX Runtime running each exported network (``effml.deploy.export_onnx`` / ``onnx_session``).
Also prints parameters and MACs of both networks (``effml.models.counting``), and with
``--profile`` the eager time per operator (where the time goes).
Usage: python benchmarks/mobile_detectors.py [--threads N] [--profile] [--json F]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _timing import inference_call, interleaved_ms, machine  # noqa: E402

import effml  # noqa: E402
import effml.detection.ssdlite  # noqa: E402,F401  registers ssdlite_mobiledet_*
from effml.deploy import export_onnx, fuse_for_inference, onnx_session  # noqa: E402
from effml.measure.onnx import INPUT_NAME  # noqa: E402
from effml.models.counting import count_macs, count_params  # noqa: E402


class TorchvisionNetwork(nn.Module):
    """torchvision's SSD without its transform and post-processing: backbone + head outputs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = model.backbone, model.head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.head(list(self.backbone(x).values()))
        return out["cls_logits"], out["bbox_regression"]



def _ort(session, x: torch.Tensor):
    feed = {INPUT_NAME: x.numpy()}
    return lambda: session.run(None, feed)


def _profile(name: str, model: nn.Module, x: torch.Tensor, rows: int = 12) -> None:
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        for _ in range(3):
            model(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(10):
                model(x)
    print(f"\n{name}: eager time per operator (10 calls)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--profile", action="store_true", help="also print eager time per operator")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    tv = TorchvisionNetwork(ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)).eval()
    ours = effml.create_model("ssdlite_mobiledet_cpu", resolution=args.size).eval()
    fused = fuse_for_inference(ours)
    x = torch.randn(1, 3, args.size, args.size)

    sizes = {
        "effml ssdlite_mobiledet_cpu": (count_params(ours), count_macs(ours, args.size)),
        "torchvision ssdlite320_mobilenet_v3_large": (count_params(tv), count_macs(tv, args.size, 3)),
    }
    print(f"machine: {machine()}")
    print(f"input 1x3x{args.size}x{args.size}, {threads} threads (torch and ONNX Runtime), network only "
          f"(no pre-/post-processing), random weights")
    for name, (p, m) in sizes.items():
        print(f"  {name:44s} {p / 1e6:6.2f} M params  {m / 1e9:6.3f} G MACs")

    with tempfile.TemporaryDirectory() as tmp:
        sessions = {}
        for name, net in (("effml", ours), ("torchvision", tv)):
            path = Path(tmp) / f"{name}.onnx"
            export_onnx(net, path, input_size=args.size, dynamic_batch=False)
            sessions[name] = onnx_session(path, threads=threads)
        ms = interleaved_ms({
            "torchvision eager": inference_call(tv, x),
            "effml eager": inference_call(ours, x),
            "effml eager BN-folded": inference_call(fused, x),
            "torchvision onnxruntime": _ort(sessions["torchvision"], x),
            "effml onnxruntime": _ort(sessions["effml"], x),
        }, rounds=args.rounds, iters=args.iters, warmup=3)
    print("\np50 latency, batch 1:")
    for name, t in ms.items():
        print(f"  {name:26s} {t:8.2f} ms")
    eager = ms["effml eager"] / ms["torchvision eager"]
    ort = ms["effml onnxruntime"] / ms["torchvision onnxruntime"]
    mac_ratio = sizes["effml ssdlite_mobiledet_cpu"][1] / sizes["torchvision ssdlite320_mobilenet_v3_large"][1]
    print(f"latency ratio MobileDet-CPU / MobileNetV3: eager {eager:.2f}, onnxruntime {ort:.2f} "
          f"(MACs ratio {mac_ratio:.2f}; paper, Pixel 1 CPU TFLite: 113 / 119 ms = 0.95)")
    if args.profile:
        _profile("effml ssdlite_mobiledet_cpu", ours, x)
        _profile("torchvision ssdlite320_mobilenet_v3_large", tv, x)
    if args.json:
        args.json.write_text(json.dumps({
            "machine": machine(), "threads": threads, "size": args.size, "latency_ms": ms,
            "params_macs": {k: {"params": p, "macs": m} for k, (p, m) in sizes.items()},
            "ratio_eager": eager, "ratio_onnxruntime": ort,
        }, indent=1))


if __name__ == "__main__":
    main()
