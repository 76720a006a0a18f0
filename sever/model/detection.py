"""Faster R-CNN detectors from torchvision, built by name (the NEU-DET seed)::

    task: detection
    classes: 6
    class_names: [crazing, inclusion, patches, pitted_surface, rolled-in_scale, scratches]
    arch:
      type: FasterRCNN
      args:
        backbone: mobilenet_v3_large_fpn   # a name in DETECTION_BACKBONES
        pretrained: null                   # null | coco | imagenet
        image_size: 640                    # the longer side the model resizes images to
    loss: DetectionLoss

``classes`` counts defect classes only; torchvision's extra background class is
added here. Labels are 0-based class indices in and out (torchvision's
1-based labels stay inside the model). Images are ``(3, H, W)`` float in
``[0, 1]``, any size: the model normalises them with the ImageNet statistics and
resizes them itself (``image_size``), and returns boxes in the input's pixels.
sever's detection data is grey repeated into three channels, which is what the
pretrained RGB backbones see from NEU-DET's grey-looking JPEGs too.

``pretrained``: ``coco`` loads torchvision's COCO-trained detector (then a new box
predictor for ``classes + 1`` classes), ``imagenet`` only the backbone's ImageNet
weights, ``null`` nothing. Weights come through torch's hub cache
(``torch.hub.get_dir()/checkpoints``): offline, copy the file named in the error
there. Without pretrained weights every layer trains, with BatchNorm; with them
the backbone's BatchNorm is frozen (torchvision's choice).

The model is a :class:`~sever.model.base.BaseModel`: ``encoder`` is the backbone's body
(ResNet-50 or MobileNetV3 features), ``decoder`` the FPN, RPN and box head, so
the optimiser's encoder/decoder groups and ``freeze_encoder_epochs`` work as for
segmentation.
"""

from __future__ import annotations

import inspect
import logging
from collections import OrderedDict
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torchvision.models import MobileNet_V3_Large_Weights, ResNet50_Weights
from torchvision.models.detection import (
    FasterRCNN_MobileNet_V3_Large_320_FPN_Weights,
    FasterRCNN_MobileNet_V3_Large_FPN_Weights,
    FasterRCNN_ResNet50_FPN_V2_Weights,
    FasterRCNN_ResNet50_FPN_Weights,
    fasterrcnn_mobilenet_v3_large_320_fpn,
    fasterrcnn_mobilenet_v3_large_fpn,
    fasterrcnn_resnet50_fpn,
    fasterrcnn_resnet50_fpn_v2,
)
from torchvision.models.detection.faster_rcnn import FasterRCNN as TorchvisionFasterRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

from sever.model.base import BaseModel
from sever.exceptions import ConfigError
from sever.registries import ARCHITECTURES, LOSSES
from sever.utils.registry import did_you_mean

logger = logging.getLogger(__name__)

# backbone name -> (torchvision builder, COCO detector weights, ImageNet backbone weights)
DETECTION_BACKBONES: dict[str, tuple[Callable[..., nn.Module], Any, Any]] = {
    "resnet50_fpn_v2": (fasterrcnn_resnet50_fpn_v2, FasterRCNN_ResNet50_FPN_V2_Weights.DEFAULT,
                        ResNet50_Weights.IMAGENET1K_V1),
    "resnet50_fpn": (fasterrcnn_resnet50_fpn, FasterRCNN_ResNet50_FPN_Weights.DEFAULT,
                     ResNet50_Weights.IMAGENET1K_V1),
    "mobilenet_v3_large_fpn": (fasterrcnn_mobilenet_v3_large_fpn, FasterRCNN_MobileNet_V3_Large_FPN_Weights.DEFAULT,
                               MobileNet_V3_Large_Weights.IMAGENET1K_V1),
    "mobilenet_v3_large_320_fpn": (fasterrcnn_mobilenet_v3_large_320_fpn,
                                   FasterRCNN_MobileNet_V3_Large_320_FPN_Weights.DEFAULT,
                                   MobileNet_V3_Large_Weights.IMAGENET1K_V1),
}
PRETRAINED = ("coco", "imagenet")
_SET_BY_SEVER = {"num_classes": "classes", "min_size": "image_size", "max_size": "image_size",
                 "box_score_thresh": "score_threshold", "box_detections_per_img": "detections_per_image"}
_MODULE_ARGS = ("backbone", "rpn_anchor_generator", "rpn_head", "box_roi_pool", "box_head", "box_predictor", "kwargs")
LOSS_PARTS = {"loss_classifier": "classifier", "loss_box_reg": "box_reg", "loss_objectness": "objectness",
              "loss_rpn_box_reg": "rpn_box_reg"}


def _build_torchvision(backbone: str, classes: int, pretrained: str | None, options: dict[str, Any],
                       key: str) -> nn.Module:
    """torchvision's Faster R-CNN with ``classes + 1`` outputs; download failures become ConfigErrors."""
    builder, coco, imagenet = DETECTION_BACKBONES[backbone]
    weights = {"coco": (coco, None), "imagenet": (None, imagenet)}.get(pretrained, (None, None))
    try:
        net = builder(weights=weights[0], weights_backbone=weights[1],
                      num_classes=None if pretrained == "coco" else classes + 1, **options)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; a bad cached file a RuntimeError
        used = weights[0] or weights[1]
        cache = f"{torch.hub.get_dir()}/checkpoints"
        raise ConfigError(
            f"{key}.pretrained: the {pretrained} weights of {backbone} could not be loaded "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no details'}). Run once with "
            f"internet access, or download {used.url} into {cache}/, or set pretrained: null"
        ) from None
    if pretrained == "coco":
        predictor = net.roi_heads.box_predictor
        net.roi_heads.box_predictor = FastRCNNPredictor(predictor.cls_score.in_features, classes + 1)
    return net


def _check_detector_args(detector_args: Any, key: str) -> dict[str, Any]:
    """``detector_args`` as a dict, checked against torchvision ``FasterRCNN``'s named arguments."""
    if detector_args is None:
        return {}
    if not isinstance(detector_args, dict):
        raise ConfigError(f"{key}: expected a mapping, got {type(detector_args).__name__}")
    valid = [name for name in inspect.signature(TorchvisionFasterRCNN).parameters
             if name not in _SET_BY_SEVER and name not in _MODULE_ARGS]
    for name in detector_args:
        if name in _SET_BY_SEVER:
            raise ConfigError(f"{key}.{name}: set by sever ({_SET_BY_SEVER[name]}), not here")
        if name not in valid:
            raise ConfigError(f"{key}.{name}: unknown argument of torchvision FasterRCNN.{did_you_mean(name, valid)}"
                              f" Valid: {', '.join(valid)}")
    return dict(detector_args)


@ARCHITECTURES.register
class FasterRCNN(BaseModel):
    """torchvision's Faster R-CNN: images in, losses (training) or scored boxes (evaluation) out.

    Args:
        classes: number of defect classes (no background), supplied by sever.
        backbone: a name in :data:`DETECTION_BACKBONES`.
        pretrained: ``None``, ``"coco"`` (whole detector) or ``"imagenet"`` (backbone only).
        image_size: resize so the longer side is this many pixels (torchvision's
            ``min_size = max_size``); None keeps torchvision's default (800/1333, 320/640 for the 320 variant).
        trainable_backbone_layers: with pretrained weights, how many backbone stages
            train (torchvision's default 3); all train without them.
        score_threshold: detections scoring below this are dropped (torchvision's 0.05).
        detections_per_image: at most this many detections per image (COCO counts 100).
        detector_args: further arguments of torchvision's ``FasterRCNN`` (e.g.
            ``box_batch_size_per_image``, ``rpn_post_nms_top_n_train``: fewer sampled
            regions make CPU training several times faster).
        config_key: the block's dotted path in the config, for error messages.
    """

    def __init__(self, classes: int, backbone: str = "mobilenet_v3_large_fpn", pretrained: str | None = None,
                 image_size: int | None = None, trainable_backbone_layers: int | None = None,
                 score_threshold: float = 0.05, detections_per_image: int = 100,
                 detector_args: dict[str, Any] | None = None, *, config_key: str = "arch"):
        key = f"{config_key}.args"
        if backbone not in DETECTION_BACKBONES:
            raise ConfigError(f"{key}.backbone: unknown backbone {backbone!r}.{did_you_mean(backbone, DETECTION_BACKBONES)}"
                              f" Valid: {', '.join(DETECTION_BACKBONES)}")
        if pretrained is not None and pretrained not in PRETRAINED:
            raise ConfigError(f"{key}.pretrained: expected null, coco or imagenet, got {pretrained!r}")
        options = _check_detector_args(detector_args, f"{key}.detector_args")
        options.update(box_score_thresh=score_threshold, box_detections_per_img=detections_per_image)
        if image_size is not None:
            if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 32:
                raise ConfigError(f"{key}.image_size: expected an integer >= 32, got {image_size!r}")
            options.update(min_size=image_size, max_size=image_size)
        if trainable_backbone_layers is not None and pretrained is not None:
            options["trainable_backbone_layers"] = trainable_backbone_layers
        net = _build_torchvision(backbone, classes, pretrained, options, key)
        decoder = nn.ModuleDict(OrderedDict(fpn=net.backbone.fpn, rpn=net.rpn, roi_heads=net.roi_heads))
        super().__init__(encoder=net.backbone.body, decoder=decoder)
        self.transform = net.transform  # resizing and normalisation; holds no parameters
        self.classes = classes

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        """Detect, or compute the training losses.

        Args:
            images: ``B`` float tensors ``(3, H_i, W_i)`` in ``[0, 1]``.
            targets: in training, per image ``{"boxes": (N, 4) float (x0, y0, x1, y1)
                pixels, "labels": (N,) int64 0-based}``.

        Returns:
            Training: the losses ``{"loss_classifier", "loss_box_reg", "loss_objectness",
            "loss_rpn_box_reg"}``. Evaluation: per image ``{"boxes" (M, 4), "labels" (M,)
            0-based, "scores" (M,)}`` in the input image's pixels, best first.
        """
        if self.training and targets is None:
            raise ValueError("FasterRCNN: training needs targets")
        sizes = [tuple(image.shape[-2:]) for image in images]
        if targets is not None:
            targets = [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in targets]
        batch, targets = self.transform(images, targets)
        features = self.decoder.fpn(self.encoder(batch.tensors))
        proposals, proposal_losses = self.decoder.rpn(batch, features, targets)
        detections, detector_losses = self.decoder.roi_heads(features, proposals, batch.image_sizes, targets)
        if self.training:
            return {**detector_losses, **proposal_losses}
        detections = self.transform.postprocess(detections, batch.image_sizes, sizes)
        return [{**d, "labels": d["labels"] - 1} for d in detections]


@LOSSES.register
class DetectionLoss(nn.Module):
    """Weighted sum of the detector's four losses (all weights 1: torchvision's training).

    Input: the model's training output (see :meth:`FasterRCNN.forward`). Returns
    ``{"loss": total, "classifier", "box_reg", "objectness", "rpn_box_reg"}``, the parts
    unweighted and detached.
    """

    def __init__(self, classifier: float = 1.0, box_reg: float = 1.0, objectness: float = 1.0,
                 rpn_box_reg: float = 1.0):
        super().__init__()
        self.weights = {"classifier": classifier, "box_reg": box_reg, "objectness": objectness,
                        "rpn_box_reg": rpn_box_reg}
        for name, weight in self.weights.items():
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
                raise ValueError(f"{name} weight must be a number >= 0, got {weight!r}")

    def forward(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        parts = {LOSS_PARTS[name]: value for name, value in losses.items()}
        total = sum(self.weights[name] * value for name, value in parts.items())
        return {"loss": total, **{name: value.detach() for name, value in parts.items()}}
