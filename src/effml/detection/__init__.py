"""Detection: anchors, box coder, anchor labelling, losses, post-processing (NMS), detectors."""

from effml.detection.anchors import AnchorSpec, anchors_per_level, feature_sizes, generate_anchors
from effml.detection.box_coder import BoxCoder
from effml.detection.losses import DetectionLoss, flatten_outputs, huber_loss, sigmoid_focal_loss
from effml.detection.postprocess import Detections, detections_to_tensor, postprocess, soft_nms
from effml.detection.targets import AnchorLabeler
from effml.detection.ssd_anchors import SSDAnchorSpec, generate_ssd_anchors

__all__ = [
    "AnchorSpec", "anchors_per_level", "feature_sizes", "generate_anchors",
    "BoxCoder",
    "AnchorLabeler",
    "DetectionLoss", "flatten_outputs", "huber_loss", "sigmoid_focal_loss",
    "Detections", "detections_to_tensor", "postprocess", "soft_nms",
    "SSDAnchorSpec", "generate_ssd_anchors",
]
