"""effml vs timm on EfficientNet-B0 (224 px), same weights, same input, one process.

Prints per-batch median latency, images/s and the effml / timm speed ratio for:
eager (plain nn.Module), effml's other CPU paths (channels_last, BN folded), and ONNX Runtime
running each library's own export. Usage: python benchmarks/classification_speed.py [--json F]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _timing import inference_call, interleaved_ms, machine  # noqa: E402

import effml  # noqa: E402
from effml.deploy import export_onnx, fuse_for_inference, onnx_session  # noqa: E402
from effml.measure.onnx import INPUT_NAME  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="efficientnet_b0")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch-sizes", default="1,16")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    import timm

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    ref = timm.create_model(args.model).eval()
    ours = effml.create_model(args.model).eval()
    ours.load_state_dict(ref.state_dict())
    fused = fuse_for_inference(ours)
    fused_cl = fuse_for_inference(ours).to(memory_format=torch.channels_last)
    ours_cl = effml.create_model(args.model).eval()
    ours_cl.load_state_dict(ref.state_dict())
    ours_cl = ours_cl.to(memory_format=torch.channels_last)
    ref_cl = timm.create_model(args.model).eval()
    ref_cl.load_state_dict(ref.state_dict())
    ref_cl = ref_cl.to(memory_format=torch.channels_last)

    print(f"machine: {machine()}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sessions = {}
        for name, model in (("effml", ours), ("timm", ref)):
            path = Path(tmp) / f"{name}.onnx"
            export_onnx(model, path, input_size=args.size, dynamic_batch=True)
            sessions[name] = onnx_session(path, threads=threads)
        for b in [int(s) for s in args.batch_sizes.split(",")]:
            x = torch.randn(b, 3, args.size, args.size)
            xcl = x.contiguous(memory_format=torch.channels_last)
            feed = {INPUT_NAME: x.numpy()}
            ms = interleaved_ms({
                "timm eager": inference_call(ref, x),
                "effml eager": inference_call(ours, x),
                "timm channels_last": inference_call(ref_cl, xcl),
                "effml channels_last": inference_call(ours_cl, xcl),
                "effml fused": inference_call(fused, x),
                "effml fused channels_last": inference_call(fused_cl, xcl),
                "timm onnxruntime": lambda: sessions["timm"].run(None, feed),
                "effml onnxruntime": lambda: sessions["effml"].run(None, feed),
            }, rounds=args.rounds, iters=args.iters)
            effml_paths = {k: v for k, v in ms.items() if k.startswith("effml")}
            fastest = min(effml_paths, key=effml_paths.get)
            ratios = {
                "eager effml/timm": ms["timm eager"] / ms["effml eager"],
                "channels_last effml/timm": ms["timm channels_last"] / ms["effml channels_last"],
                "onnxruntime effml/timm": ms["timm onnxruntime"] / ms["effml onnxruntime"],
                f"fastest effml ({fastest}) / timm onnxruntime": ms["timm onnxruntime"] / ms[fastest],
            }
            print(f"\n{args.model} {args.size}px batch {b} ({threads} threads)")
            print(f"  {'path':28s} {'ms/batch':>9s} {'img/s':>8s}")
            for k, v in ms.items():
                print(f"  {k:28s} {v:9.2f} {b * 1e3 / v:8.1f}")
            for k, v in ratios.items():
                print(f"  ratio {k}: {v:.3f}")
            rows.append({"batch": b, "ms": ms, "ratios": ratios})
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "model": args.model,
                                         "size": args.size, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
