"""effml vs effdet on EfficientDet-D0 (512 px), same weights, same input, one process.

Times the whole detector: network + post-processing (top-5000, decode, class-aware NMS, 100
detections), per batch, and prints images/s and the effml / effdet ratios for:
- eager: effml's DetectionPredictor vs effdet's DetBenchPredict;
- effml's other CPU paths: channels_last, BN folded (fuse_for_inference), both;
- ONNX Runtime running each library's exported network (pre-NMS, as effdet recommends), each
  followed by its own library's post-processing.
Usage: python benchmarks/detection_speed.py [--batch-sizes 1,4] [--json F]
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
from effml.detection.predictor import DetectionPredictor  # noqa: E402
from effml.measure.onnx import INPUT_NAME  # noqa: E402


def _ort_then(session, x: torch.Tensor, levels: int, post):
    feed = {INPUT_NAME: x.numpy()}

    def call():
        outs = [torch.from_numpy(o) for o in session.run(None, feed)]
        with torch.inference_mode():
            return post(outs[:levels], outs[levels:])
    return call


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="tf_efficientdet_d0")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch-sizes", default="1,4")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--iters", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    from effdet import DetBenchPredict, create_model
    from effdet.bench import _batch_detection, _post_process

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    size = (args.size, args.size)
    ref_net = create_model(args.model, pretrained=False, pretrained_backbone=False, image_size=size).eval()
    ref = DetBenchPredict(ref_net).eval()
    ours_net = effml.create_model(args.model, resolution=args.size).eval()
    ours_net.load_state_dict(ref_net.state_dict())
    ours = DetectionPredictor(ours_net)
    fused = DetectionPredictor(fuse_for_inference(ours_net))
    fused_cl = DetectionPredictor(fuse_for_inference(ours_net).to(memory_format=torch.channels_last))
    ours_cl = DetectionPredictor(effml.create_model(args.model, resolution=args.size).eval())
    ours_cl.model.load_state_dict(ref_net.state_dict())
    ours_cl.model.to(memory_format=torch.channels_last)
    levels = ours_net.spec.fpn.num_levels
    cfg = ref_net.config
    anchors = ref.anchors

    def effdet_post(cls_out, box_out):
        c, b, idx, cls = _post_process(cls_out, box_out, num_levels=levels, num_classes=cfg.num_classes,
                                       max_detection_points=cfg.max_detection_points)
        return _batch_detection(c.shape[0], c, b, anchors.boxes, idx, cls,
                                max_det_per_image=cfg.max_det_per_image, soft_nms=False)

    def effml_post(cls_out, box_out):
        h, w = size
        return effml.detection.postprocess(cls_out, box_out, ours.anchors(h, w, torch.device("cpu")),
                                           ours_net.num_classes, image_sizes=[size] * cls_out[0].shape[0])

    print(f"machine: {machine()}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sessions = {}
        for name, net in (("effml", ours_net), ("effdet", ref_net)):
            path = Path(tmp) / f"{name}.onnx"
            export_onnx(net, path, input_size=args.size, dynamic_batch=True)
            sessions[name] = onnx_session(path, threads=threads)
        for bs in [int(s) for s in args.batch_sizes.split(",")]:
            x = torch.randn(bs, 3, *size)
            xcl = x.contiguous(memory_format=torch.channels_last)
            ms = interleaved_ms({
                "effdet eager": inference_call(ref, x),
                "effml eager": inference_call(ours, x),
                "effml channels_last": inference_call(ours_cl, xcl),
                "effml fused": inference_call(fused, x),
                "effml fused channels_last": inference_call(fused_cl, xcl),
                "effdet onnxruntime": _ort_then(sessions["effdet"], x, levels, effdet_post),
                "effml onnxruntime": _ort_then(sessions["effml"], x, levels, effml_post),
            }, rounds=args.rounds, iters=args.iters, warmup=2)
            for name, t in ms.items():
                rows.append({"batch": bs, "path": name, "ms": t, "images_per_s": bs * 1e3 / t})
            base = ms["effdet eager"]
            fastest = min((k for k in ms if k.startswith("effml")), key=ms.get)
            print(f"\nbatch {bs}:")
            for name, t in ms.items():
                print(f"  {name:28s} {t:9.1f} ms  {bs * 1e3 / t:7.2f} img/s  speed vs effdet eager {base / t:5.2f}")
            print(f"  effml eager / effdet eager speed ratio: {base / ms['effml eager']:.3f}")
            print(f"  effml fastest ({fastest}) / effdet onnxruntime: {ms['effdet onnxruntime'] / ms[fastest]:.3f}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "threads": threads, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
