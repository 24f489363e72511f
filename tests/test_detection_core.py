"""Shared detection pieces: anchors, box coder, labeler, losses and post-processing.

Fidelity is checked against effdet (rwightman/efficientdet-pytorch 0.4.1), which we did not
write: its anchors are yxyx and its classes 1-based, so each comparison maps ours accordingly.
"""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.ops import batched_nms, box_iou

from effml.detection import (
    AnchorLabeler, AnchorSpec, BoxCoder, DetectionLoss, anchors_per_level, detections_to_tensor,
    feature_sizes, flatten_outputs, generate_anchors, huber_loss, postprocess, sigmoid_focal_loss, soft_nms,
)
from effml.errors import SpecError

with warnings.catch_warnings():  # effdet scripts functions at import (torch.jit deprecation)
    warnings.simplefilter("ignore")
    effdet_anchors = pytest.importorskip("effdet.anchors")
    effdet_bench = pytest.importorskip("effdet.bench")
    effdet_loss = pytest.importorskip("effdet.loss")

EFFDET_RATIOS = ((1.0, 1.0), (1.4, 0.7), (0.7, 1.4))


def yxyx_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    return boxes[..., [1, 0, 3, 2]]


def random_boxes(n: int, size: tuple[int, int], g: torch.Generator, max_side: float = 120.0) -> torch.Tensor:
    """n xyxy boxes with positive size inside-ish an image of size (h, w)."""
    h, w = size
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.9, h * 0.9])
    wh = torch.rand(n, 2, generator=g) * max_side + 4
    return torch.cat([xy, xy + wh], dim=1)


def random_outputs(spec: AnchorSpec, size: tuple[int, int], num_classes: int, batch: int, g: torch.Generator,
                   box_std: float = 0.2) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-level raw head outputs [B, A*C, H, W] and [B, A*4, H, W]."""
    a = spec.num_anchors
    cls = [torch.randn(batch, a * num_classes, h, w, generator=g) for h, w in feature_sizes(spec, size)]
    box = [torch.randn(batch, a * 4, h, w, generator=g) * box_std for h, w in feature_sizes(spec, size)]
    return cls, box


def split_levels(flat: torch.Tensor, spec: AnchorSpec, size: tuple[int, int]) -> list[torch.Tensor]:
    """[B, N, *] flat targets -> effdet's per-level [B, H, W, A * k]."""
    out, start = [], 0
    for h, w in feature_sizes(spec, size):
        n = h * w * spec.num_anchors
        out.append(flat[:, start:start + n].reshape(flat.shape[0], h, w, -1))
        start += n
    return out


# ---------------------------------------------------------------------------------------------
# anchors (google/automl efficientdet/tf2/anchors.py; effdet anchors.py)


def test_d0_anchors_at_512():
    spec = AnchorSpec()
    anchors = generate_anchors(spec, (512, 512))
    assert spec.num_anchors == 9
    assert anchors.shape == (49_104, 4) and anchors.dtype == torch.float32
    assert anchors[0].tolist() == [-12.0, -12.0, 20.0, 20.0]
    assert feature_sizes(spec, (512, 512)) == [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4)]
    assert spec.feature_sizes((512, 512)) == feature_sizes(spec, (512, 512))
    assert anchors_per_level(spec, (512, 512)) == [36_864, 9_216, 2_304, 576, 144]
    # odd sizes round up per level, as automl get_feat_sizes (its tests build D0 at 511x513)
    assert feature_sizes(spec, (511, 513))[0] == (64, 65)


@pytest.mark.parametrize("size", [(512, 512), (384, 640), (511, 513)])
@pytest.mark.parametrize("ratios", [EFFDET_RATIOS, (1.0, 2.0, 0.5)])
def test_anchors_equal_effdet(size, ratios):
    ours = generate_anchors(AnchorSpec(aspect_ratios=ratios), size)
    theirs = effdet_anchors.Anchors(3, 7, 3, list(ratios), 4.0, size).boxes
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, yxyx_to_xyxy(theirs), rtol=0, atol=1e-5)


def test_anchor_order_octave_outer_aspect_inner_and_centers():
    spec = AnchorSpec(aspect_ratios=(1.0, 2.0, 0.5))
    anchors = generate_anchors(spec, (256, 256))
    widths = anchors[:9, 2] - anchors[:9, 0]
    heights = anchors[:9, 3] - anchors[:9, 1]
    expect_w = [4 * 8 * 2 ** (o / 3) * math.sqrt(a) for o in range(3) for a in (1.0, 2.0, 0.5)]
    expect_h = [4 * 8 * 2 ** (o / 3) / math.sqrt(a) for o in range(3) for a in (1.0, 2.0, 0.5)]
    torch.testing.assert_close(widths, torch.tensor(expect_w), rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(heights, torch.tensor(expect_h), rtol=1e-6, atol=1e-4)
    # A head map holding each location's (cy, cx) in every anchor slot, flattened the way the
    # loss and NMS flatten outputs, must line up with the anchor centers.
    maps = []
    for level, (h, w) in zip(range(3, 8), feature_sizes(spec, (256, 256))):
        s = 256 / h
        cy = (torch.arange(h) * s + s / 2).view(h, 1).expand(h, w)
        cx = (torch.arange(w) * s + s / 2).view(1, w).expand(h, w)
        per_anchor = torch.stack([cy, cx])  # [2, H, W]
        maps.append(per_anchor.repeat(spec.num_anchors, 1, 1).unsqueeze(0))  # [1, A*2, H, W]
    centers = flatten_outputs(maps, 2)[0]
    expect = torch.stack([(anchors[:, 1] + anchors[:, 3]) / 2, (anchors[:, 0] + anchors[:, 2]) / 2], -1)
    torch.testing.assert_close(centers, expect, rtol=0, atol=1e-4)


def test_anchor_spec_validation_and_normalisation():
    spec = AnchorSpec(aspect_ratios=[[1.0, 1.0], [1.4, 0.7]], anchor_scale=[3.0, 3.0, 3.0, 4.0, 4.0])
    assert spec.aspect_ratios == ((1.0, 1.0), (1.4, 0.7)) and hash(spec)
    assert spec.level_anchor_scale(6) == 4.0 and spec.num_anchors == 6
    for bad in (dict(min_level=5, max_level=4), dict(aspect_ratios=()), dict(aspect_ratios=(-1.0,)),
                dict(anchor_scale=0.0), dict(num_scales=0), dict(anchor_scale=(4.0, 4.0)),
                dict(aspect_ratios=((1.0, 2.0, 3.0),))):
        with pytest.raises(SpecError):
            AnchorSpec(**bad)
    with pytest.raises(SpecError):
        generate_anchors(AnchorSpec(), (0, 512))


# ---------------------------------------------------------------------------------------------
# box coder (automl faster_rcnn_box_coder.py; TF OD API ssdlite_mobiledet_* configs)


def test_coder_known_values():
    box = torch.tensor([0.0, 0.0, 20.0, 10.0])  # xyxy: center (x 10, y 5), w 20, h 10
    anchor = torch.tensor([0.0, 0.0, 10.0, 10.0])  # center (5, 5), 10 x 10
    # ty = (5-5)/10 = 0, tx = (10-5)/10 = 0.5, th = log(10/10) = 0, tw = log(20/10)
    torch.testing.assert_close(BoxCoder().encode(box, anchor), torch.tensor([0.0, 0.5, 0.0, math.log(2)]))
    ssd = BoxCoder((10.0, 10.0, 5.0, 5.0))
    torch.testing.assert_close(ssd.encode(box, anchor), torch.tensor([0.0, 5.0, 0.0, 5 * math.log(2)]))
    torch.testing.assert_close(BoxCoder().decode(torch.tensor([0.0, 0.5, 0.0, math.log(2)]), anchor), box)
    # a zero-size box stays finite thanks to the eps floor
    assert torch.isfinite(BoxCoder().encode(torch.tensor([5.0, 5.0, 5.0, 5.0]), anchor)).all()
    with pytest.raises(SpecError):
        BoxCoder((10.0, 10.0, 5.0))


_coord = st.floats(-200.0, 800.0, allow_nan=False, width=64)
_side = st.floats(0.5, 400.0, allow_nan=False, width=64)
_box = st.tuples(_coord, _coord, _side, _side)


@settings(max_examples=60, deadline=None)
@given(boxes=st.lists(st.tuples(_box, _box), min_size=1, max_size=8),
       scaled=st.booleans())
def test_coder_round_trip(boxes, scaled):
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0) if scaled else None)
    b = torch.tensor([[x, y, x + w, y + h] for (x, y, w, h), _ in boxes], dtype=torch.float64)
    a = torch.tensor([[x, y, x + w, y + h] for _, (x, y, w, h) in boxes], dtype=torch.float64)
    deltas = coder.encode(b, a)
    assert deltas.shape == b.shape
    torch.testing.assert_close(coder.decode(deltas, a), b, rtol=0, atol=1e-7)
    torch.testing.assert_close(coder.encode(coder.decode(deltas, a), a), deltas, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# anchor labeler (google/automl tf2/anchors.py AnchorLabeler; effdet anchors.py)

LABEL_SIZE = (256, 320)
THIN_BOX = [10.0, 10.0, 12.0, 60.0]  # 2 x 50 px: IoU < 0.5 with every anchor


def _labelers(num_classes: int = 5):
    spec = AnchorSpec(aspect_ratios=EFFDET_RATIOS)
    anchors = generate_anchors(spec, LABEL_SIZE)
    theirs = effdet_anchors.AnchorLabeler(
        effdet_anchors.Anchors(3, 7, 3, list(EFFDET_RATIOS), 4.0, LABEL_SIZE), num_classes, match_threshold=0.5)
    return spec, anchors, AnchorLabeler(anchors, num_classes), theirs


def test_labeler_equals_effdet():
    spec, anchors, ours, theirs = _labelers()
    g = torch.Generator().manual_seed(0)
    images = []
    for n in (5, 3, 1, 4):
        images.append((random_boxes(n, LABEL_SIZE, g), torch.randint(0, 5, (n,), generator=g)))
    images[0][0][0] = torch.tensor(THIN_BOX)
    for boxes, labels in images:
        cls, box, num_pos = ours.label(boxes, labels)
        e_cls, e_box, e_pos = theirs.label_anchors(boxes[:, [1, 0, 3, 2]], labels + 1)  # effdet: yxyx, 1-based
        e_cls = torch.cat([c.reshape(-1) for c in e_cls])  # already 0-based, bg -1
        e_box = torch.cat([b.reshape(-1, 4) for b in e_box])
        assert torch.equal(cls, e_cls)
        torch.testing.assert_close(box, e_box, rtol=0, atol=1e-5)
        assert float(num_pos) == float(e_pos) > 0
        assert (box[cls < 0] == 0).all()

    cls_b, box_b, pos_b = ours.label_batch([b for b, _ in images], [c for _, c in images])
    e_cls, e_box, e_pos = theirs.batch_label_anchors([b[:, [1, 0, 3, 2]] for b, _ in images],
                                                     [c + 1 for _, c in images])
    assert cls_b.shape == (4, anchors.shape[0]) and box_b.shape == (4, anchors.shape[0], 4)
    assert torch.equal(cls_b, torch.cat([c.reshape(4, -1) for c in e_cls], 1))
    torch.testing.assert_close(pos_b, e_pos)


def test_force_match_gives_thin_box_an_anchor():
    spec, anchors, ours, _ = _labelers()
    boxes, labels = torch.tensor([THIN_BOX]), torch.tensor([3])
    assert box_iou(boxes, anchors).max() < 0.5
    free = AnchorLabeler(anchors, 5, force_match=False)
    assert float(free.label(boxes, labels)[2]) == 0
    cls, box, num_pos = ours.label(boxes, labels)
    assert float(num_pos) == 1 and (cls == 3).sum() == 1
    best = int(box_iou(boxes, anchors).argmax())
    assert cls[best] == 3 and (box[best] != 0).any()


def test_labeler_empty_image_padding_and_ignore_band():
    _, anchors, ours, _ = _labelers()
    n = anchors.shape[0]
    cls, box, num_pos = ours.label(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert torch.equal(cls, torch.full((n,), -1)) and not box.any() and float(num_pos) == 0
    assert torch.isfinite(box).all()
    # negative labels are padding rows and are dropped
    g = torch.Generator().manual_seed(1)
    boxes = random_boxes(3, LABEL_SIZE, g)
    labels = torch.tensor([1, 2, 0])
    padded = ours.label(torch.cat([boxes, torch.zeros(2, 4)]), torch.cat([labels, torch.tensor([-1, -1])]))
    assert all(torch.equal(x, y) for x, y in zip(padded, ours.label(boxes, labels)))
    with pytest.raises(SpecError):
        ours.label(boxes, torch.tensor([0, 1, 5]))  # 5 classes -> index 5 is out of range
    # an ignore band: 0.4 <= IoU < 0.5 -> -2 (unless forced)
    banded = AnchorLabeler(anchors, 5, match_threshold=0.5, unmatched_threshold=0.4, force_match=False)
    cls, _, _ = banded.label(boxes, labels)
    best = box_iou(boxes, anchors).max(0).values
    assert torch.equal(cls == -2, (best >= 0.4) & (best < 0.5)) and (cls == -2).any()
    assert torch.equal(cls >= 0, best >= 0.5) and torch.equal(cls == -1, best < 0.4)
    with pytest.raises(SpecError):
        AnchorLabeler(anchors, 5, match_threshold=0.4, unmatched_threshold=0.5)


# ---------------------------------------------------------------------------------------------
# losses (google/automl tf2/train_lib.py FocalLoss / BoxLoss; effdet loss.py)


def test_focal_loss_hand_values():
    logits = torch.tensor([0.0, math.log(3.0)])  # p = 0.5, 0.75
    targets = torch.tensor([1.0, 0.0])
    ln2 = math.log(2.0)
    # element 0: p_t = 0.5, alpha_t = 0.25, (1 - p_t)^2 = 0.25, BCE = -ln 0.5 = ln 2 -> 0.0625 ln 2
    # element 1: p_t = 1 - 0.75 = 0.25, alpha_t = 0.75, (0.75)^2 = 0.5625, BCE = -ln 0.25 = 2 ln 2
    #            -> 0.75 * 0.5625 * 2 ln 2 = 0.84375 ln 2
    got = sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0)
    torch.testing.assert_close(got, torch.tensor([0.0625 * ln2, 0.84375 * ln2]))
    # smoothing 0.1 -> BCE targets 0.95 / 0.05; the modulator still uses the hard targets.
    # element 0: BCE = -(0.95 ln .5 + 0.05 ln .5) = ln 2 (unchanged)
    # element 1: BCE = -(0.05 ln .75 + 0.95 ln .25) = 0.05 ln(4/3) + 0.95 ln 4
    smoothed = sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0, label_smoothing=0.1)
    bce1 = 0.05 * math.log(4 / 3) + 0.95 * math.log(4.0)
    torch.testing.assert_close(smoothed, torch.tensor([0.0625 * ln2, 0.75 * 0.5625 * bce1]))
    # Huber: 0.5 x^2 inside delta, delta (|x| - delta / 2) outside
    torch.testing.assert_close(huber_loss(torch.tensor([0.05, -0.3]), torch.zeros(2), 0.1),
                               torch.tensor([0.5 * 0.05 ** 2, 0.1 * (0.3 - 0.05)]))


def _effdet_loss(num_classes: int, label_smoothing: float):
    config = SimpleNamespace(num_classes=num_classes, alpha=0.25, gamma=1.5, delta=0.1, box_loss_weight=50.0,
                             label_smoothing=label_smoothing, legacy_focal=False, jit_loss=False)
    return effdet_loss.DetectionLoss(config)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_detection_loss_equals_effdet(label_smoothing):
    size, num_classes, batch = (128, 128), 4, 2
    spec = AnchorSpec()
    g = torch.Generator().manual_seed(2)
    cls_out, box_out = random_outputs(spec, size, num_classes, batch, g)
    n = sum(anchors_per_level(spec, size))
    # random targets with positives, background and ignored anchors; box targets 0 off positives
    cls_t = torch.randint(-2, num_classes, (batch, n), generator=g)
    box_t = torch.randn(batch, n, 4, generator=g) * 0.3 * (cls_t >= 0).unsqueeze(-1)
    num_pos = (cls_t >= 0).sum(1).float()
    ours = DetectionLoss(num_classes, label_smoothing=label_smoothing)(cls_out, box_out, cls_t, box_t, num_pos)
    theirs = _effdet_loss(num_classes, label_smoothing)(
        cls_out, box_out, split_levels(cls_t, spec, size), split_levels(box_t, spec, size), num_pos)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # ignored anchors do not contribute: changing their logits leaves the loss unchanged
    ignored = split_levels((cls_t == -2).float(), spec, size)  # [B, H, W, A]
    moved = [o + 5.0 * m.repeat_interleave(num_classes, -1).permute(0, 3, 1, 2) for o, m in zip(cls_out, ignored)]
    again = DetectionLoss(num_classes, label_smoothing=label_smoothing)(moved, box_out, cls_t, box_t, num_pos)
    torch.testing.assert_close(again[1], ours[1])
    as_background = cls_t.clamp(min=-1)  # the same anchors as background do count
    loss = DetectionLoss(num_classes)
    before = loss(cls_out, box_out, as_background, box_t, num_pos)[1]
    assert not torch.allclose(before, loss(moved, box_out, as_background, box_t, num_pos)[1])


def test_detection_loss_with_labeler_targets_and_no_positives():
    size, num_classes = (128, 128), 3
    spec = AnchorSpec()
    anchors = generate_anchors(spec, size)
    labeler = AnchorLabeler(anchors, num_classes)
    g = torch.Generator().manual_seed(3)
    cls_out, box_out = random_outputs(spec, size, num_classes, 2, g)
    for o in cls_out + box_out:
        o.requires_grad_(True)
    boxes = [random_boxes(2, size, g, max_side=60), torch.zeros(0, 4)]
    labels = [torch.tensor([0, 2]), torch.zeros(0, dtype=torch.long)]
    targets = labeler.label_batch(boxes, labels)
    assert float(targets[2][1]) == 0
    total, cls_loss, box_loss = DetectionLoss(num_classes)(cls_out, box_out, *targets)
    e_lab = effdet_anchors.AnchorLabeler(effdet_anchors.Anchors(3, 7, 3, [1.0, 2.0, 0.5], 4.0, size), num_classes)
    e_targets = e_lab.batch_label_anchors([b[:, [1, 0, 3, 2]] for b in boxes], [c + 1 for c in labels])
    theirs = _effdet_loss(num_classes, 0.0)(cls_out, box_out, *e_targets)
    torch.testing.assert_close(total, theirs[0], rtol=1e-5, atol=1e-5)
    total.backward()
    assert all(torch.isfinite(o.grad).all() for o in cls_out + box_out)
    # a batch without a single object: finite, box loss exactly 0
    empty = labeler.label_batch([torch.zeros(0, 4)] * 2, [torch.zeros(0, dtype=torch.long)] * 2)
    total, cls_loss, box_loss = DetectionLoss(num_classes)(cls_out, box_out, *empty)
    assert torch.isfinite(total) and box_loss.item() == 0 and cls_loss.item() > 0
    with pytest.raises(SpecError):
        DetectionLoss(num_classes)(cls_out, box_out, empty[0][:, :-9], empty[1][:, :-9], empty[2])


# ---------------------------------------------------------------------------------------------
# post-processing (google/automl tf2/postprocess.py; effdet bench.py)


def _effdet_detect(cls_out, box_out, size, num_classes, image_sizes=None):
    anchors = effdet_anchors.Anchors(3, 7, 3, [1.0, 2.0, 0.5], 4.0, size)
    c, b, idx, classes = effdet_bench._post_process(cls_out, box_out, num_levels=5, num_classes=num_classes,
                                                    max_detection_points=5000)
    img_scale = img_size = None
    if image_sizes is not None:  # effdet's img_size is (w, h), scale 1 = input pixels
        img_scale = torch.ones(len(image_sizes))
        img_size = torch.tensor([[w, h] for h, w in image_sizes], dtype=torch.float32)
    return effdet_bench._batch_detection(len(cls_out[0]), c, b, anchors.boxes, idx, classes, img_scale, img_size,
                                         max_det_per_image=100)


@pytest.mark.parametrize("clip", [False, True])
def test_postprocess_equals_effdet(clip):
    size, num_classes, batch = (256, 256), 3, 2
    spec = AnchorSpec()
    g = torch.Generator().manual_seed(4)
    cls_out, box_out = random_outputs(spec, size, num_classes, batch, g, box_std=0.5)
    image_sizes = [(200, 256), (256, 180)] if clip else None
    anchors = generate_anchors(spec, size)
    dets = postprocess(cls_out, box_out, anchors, num_classes, image_sizes=image_sizes)
    theirs = _effdet_detect(cls_out, box_out, size, num_classes, image_sizes)  # [B, 100, 6], 1-based classes
    assert len(dets) == batch
    for d, t in zip(dets, theirs):
        k = int((t[:, 4] > 0).sum())
        assert len(d) == k > 10
        torch.testing.assert_close(d.boxes, t[:k, :4], rtol=0, atol=1e-4)
        torch.testing.assert_close(d.scores, t[:k, 4], rtol=0, atol=1e-5)
        assert torch.equal(d.labels + 1, t[:k, 5].long())
        assert (d.scores[:-1] >= d.scores[1:]).all()
        if clip:
            assert d.boxes.min() >= 0
    ours_t = detections_to_tensor(dets, 100)
    ours_t[..., 5] += (ours_t[..., 4] > 0).float()  # to effdet's 1-based classes
    torch.testing.assert_close(ours_t, theirs, rtol=0, atol=1e-4)


def _naive_soft_nms(boxes, scores, labels, sigma, threshold):
    """Per-class gaussian soft-NMS written the slow, obvious way (automl nms_np semantics)."""
    out = []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten().tolist()
        cur = {i: float(scores[i]) for i in idx}
        while cur:
            best = max(cur, key=cur.get)
            out.append((best, cur.pop(best)))
            for j in list(cur):
                iou = float(box_iou(boxes[best:best + 1], boxes[j:j + 1]))
                cur[j] *= math.exp(-iou * iou / sigma)
                if cur[j] < threshold:
                    del cur[j]
    out.sort(key=lambda t: -t[1])
    return out


def test_soft_nms_hand_example_and_naive_reference():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [0.0, 0.0, 10.0, 10.0],
                          [50.0, 50.0, 60.0, 60.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    labels = torch.tensor([0, 0, 1, 0])
    keep, kept = soft_nms(boxes, scores, labels, sigma=0.5)
    # box 1 overlaps box 0 with IoU 90/110: decayed to 0.8 * exp(-(9/11)^2 / 0.5); box 2 is
    # another class and box 3 is disjoint, both keep their scores.
    decayed = 0.8 * math.exp(-((90 / 110) ** 2) / 0.5)
    assert keep.tolist() == [0, 2, 3, 1]
    torch.testing.assert_close(kept, torch.tensor([0.9, 0.7, 0.6, decayed]))
    # hard NMS at 0.5 drops box 1 entirely
    assert batched_nms(boxes, scores, labels, 0.5).tolist() == [0, 2, 3]

    g = torch.Generator().manual_seed(5)
    boxes = random_boxes(60, (100, 100), g, max_side=40)
    scores = torch.rand(60, generator=g)
    labels = torch.randint(0, 3, (60,), generator=g)
    keep, kept = soft_nms(boxes, scores, labels, sigma=0.5, score_threshold=0.001)
    ref = _naive_soft_nms(boxes, scores, labels, 0.5, 0.001)
    assert keep.tolist() == [i for i, _ in ref]
    torch.testing.assert_close(kept, torch.tensor([s for _, s in ref]), rtol=1e-5, atol=1e-6)
    # stopping after max_detections gives exactly the top of the full result
    keep10, kept10 = soft_nms(boxes, scores, labels, sigma=0.5, max_detections=10)
    assert keep10.tolist() == keep[:10].tolist()


def test_postprocess_soft_nms_mode():
    size, num_classes = (128, 128), 2
    spec = AnchorSpec()
    g = torch.Generator().manual_seed(6)
    cls_out, box_out = random_outputs(spec, size, num_classes, 1, g, box_std=0.1)
    anchors = generate_anchors(spec, size)
    hard = postprocess(cls_out, box_out, anchors, num_classes, max_detections=1000)[0]
    soft = postprocess(cls_out, box_out, anchors, num_classes, max_detections=1000, soft_nms_sigma=0.5)[0]
    assert len(soft) > len(hard)  # soft-NMS decays overlapping boxes instead of removing them
    assert (soft.scores[:-1] >= soft.scores[1:]).all() and soft.scores.min() >= 0.001
    top = postprocess(cls_out, box_out, anchors, num_classes, soft_nms_sigma=0.5)[0]
    assert len(top) == 100
    torch.testing.assert_close(top.scores, soft.scores[:100])
    # nothing above a high threshold: empty detections, zero-padded tensor
    none = postprocess(cls_out, box_out, anchors, num_classes, score_threshold=0.9999)
    assert len(none[0]) == 0 and not detections_to_tensor(none, 100).any()


def test_top_candidates_equals_a_full_topk():
    from effml.detection.postprocess import top_candidates

    g = torch.Generator().manual_seed(3)
    for n, c, k in [(500, 90, 100), (500, 7, 3000), (50, 4, 500), (1000, 3, 1000)]:
        logits = torch.randn(n, c, generator=g)
        logits[::7, 2] = 5.0  # a block of ties at the top
        values, anchors, classes = top_candidates(logits, k)
        ref_values, ref_index = logits.reshape(-1).topk(min(k, n * c))
        assert torch.equal(values, ref_values)
        assert torch.equal(logits[anchors, classes], values)
        assert len(set(zip(anchors.tolist(), classes.tolist()))) == len(values)  # distinct pairs
