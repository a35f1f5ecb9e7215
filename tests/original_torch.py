"""The original PolarMask network in PyTorch, written for the converter's tests from
../shared/reference/original_checkpoints.md (module names, shapes, strides, padding) and the spec
(sections 1 and 5): the mmdet v1 ResNet (caffe style) / ResNeXt (pytorch style), FPN and the
FCOS_Instance_Head_MIOU_MSKCTNESS ("fcos_" keys) or PolarMask_Head ("polar_" keys), plus a NumPy
copy of the original's inference (get_bboxes_single + multiclass NMS) in its own ray order.

Nothing here imports polarmask_tf: it is the independent side of the parity tests.

    net = OriginalPolarMask("resnet50", head_prefix="fcos")
    randomize(net, seed=0)                      # weights, BN statistics and scales, all non-trivial
    outputs = net(images_nchw)                  # per level: cls [B, 80, h, w], centerness, bbox, mask
"""

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

DEPTHS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3), "resnext101_64x4d": (3, 4, 23, 3)}
STRIDES = (8, 16, 32, 64, 128)


class Bottleneck(nn.Module):
    def __init__(self, inplanes, planes, stride, style, groups=1, base_width=4):
        super().__init__()
        width = planes if groups == 1 else math.floor(planes * base_width / 64) * groups
        conv1_stride, conv2_stride = (stride, 1) if style == "caffe" else (1, stride)
        self.conv1 = nn.Conv2d(inplanes, width, 1, stride=conv1_stride, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=conv2_stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False), nn.BatchNorm2d(planes * 4)
            )

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class Backbone(nn.Module):
    def __init__(self, name):
        super().__init__()
        style, groups = ("pytorch", 64) if name.startswith("resnext") else ("caffe", 1)
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        inplanes = 64
        for stage, blocks in enumerate(DEPTHS[name]):
            planes = 64 * 2**stage
            layer = []
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                layer.append(Bottleneck(inplanes, planes, stride, style, groups))
                inplanes = planes * 4
            setattr(self, f"layer{stage + 1}", nn.Sequential(*layer))

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        features = []
        for stage in range(1, 5):
            x = getattr(self, f"layer{stage}")(x)
            features.append(x)
        return features[1:]  # C3, C4, C5


class ConvModule(nn.Module):
    def __init__(self, inputs, outputs, kernel_size, stride=1, norm=False):
        super().__init__()
        self.conv = nn.Conv2d(inputs, outputs, kernel_size, stride, kernel_size // 2, bias=not norm)
        if norm:
            self.gn = nn.GroupNorm(32, outputs)

    def forward(self, x):
        x = self.conv(x)
        return F.relu(self.gn(x)) if hasattr(self, "gn") else x


class FPN(nn.Module):
    def __init__(self, channels=(512, 1024, 2048)):
        super().__init__()
        self.lateral_convs = nn.ModuleList(ConvModule(c, 256, 1) for c in channels)
        self.fpn_convs = nn.ModuleList([ConvModule(256, 256, 3) for _ in range(3)]
                                       + [ConvModule(256, 256, 3, stride=2) for _ in range(2)])

    def forward(self, features):
        laterals = [conv(c) for conv, c in zip(self.lateral_convs, features, strict=True)]
        for i in (2, 1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], scale_factor=2, mode="nearest")
        outs = [self.fpn_convs[i](laterals[i]) for i in range(3)]
        outs.append(self.fpn_convs[3](outs[-1]))
        outs.append(self.fpn_convs[4](F.relu(outs[-1])))
        return outs


class Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, x):
        return x * self.scale


class Head(nn.Module):
    def __init__(self, prefix, num_classes=80, num_rays=36):
        super().__init__()
        self.prefix = prefix
        for tower in ("cls", "reg", "mask"):
            setattr(self, f"{tower}_convs", nn.ModuleList(ConvModule(256, 256, 3, norm=True) for _ in range(4)))
        for output, channels in (("cls", num_classes), ("reg", 4), ("mask", num_rays), ("centerness", 1)):
            setattr(self, f"{prefix}_{output}", nn.Conv2d(256, channels, 3, padding=1))
        self.scales_bbox = nn.ModuleList(Scale() for _ in STRIDES)
        self.scales_mask = nn.ModuleList(Scale() for _ in STRIDES)

    def forward(self, pyramid):
        outputs = []
        for level, x in enumerate(pyramid):
            cls_feat, reg_feat, mask_feat = x, x, x
            for i in range(4):
                cls_feat = self.cls_convs[i](cls_feat)
                reg_feat = self.reg_convs[i](reg_feat)
                mask_feat = self.mask_convs[i](mask_feat)
            p = self.prefix
            outputs.append({
                "cls": getattr(self, f"{p}_cls")(cls_feat),
                "centerness": getattr(self, f"{p}_centerness")(cls_feat),
                "bbox": self.scales_bbox[level](getattr(self, f"{p}_reg")(reg_feat)).float().exp(),
                "mask": self.scales_mask[level](getattr(self, f"{p}_mask")(mask_feat)).float().exp(),
            })
        return outputs


class OriginalPolarMask(nn.Module):
    """backbone / neck / bbox_head, as the original's detector registers them."""

    def __init__(self, backbone="resnet50", head_prefix="fcos"):
        super().__init__()
        self.backbone = Backbone(backbone)
        self.neck = FPN()
        self.bbox_head = Head(head_prefix)

    def forward(self, images):
        return self.bbox_head(self.neck(self.backbone(images)))


def randomize(net, seed=0, cls_bias=-4.0):
    """Random weights that keep activations of order one through any depth, with non-trivial BN
    running statistics, GN affines, per-level scales and class biases around `cls_bias` (so a few
    hundred (location, class) pairs pass the 0.05 score threshold)."""
    generator = torch.Generator().manual_seed(seed)

    def uniform(shape, low, high):
        return low + (high - low) * torch.rand(shape, generator=generator)

    with torch.no_grad():
        for name, module in net.named_modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                gain = 0.5 if name.startswith("bbox_head") and "_convs" not in name else 1.0
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * gain / math.sqrt(fan_in))
                if module.bias is not None:
                    module.bias.copy_(uniform(module.bias.shape, -0.1, 0.1))
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.copy_(uniform(module.weight.shape, 0.5, 1.0))
                module.bias.copy_(uniform(module.bias.shape, -0.2, 0.2))
                module.running_mean.copy_(uniform(module.running_mean.shape, -0.3, 0.3))
                module.running_var.copy_(uniform(module.running_var.shape, 0.5, 2.0))
            elif isinstance(module, nn.GroupNorm):
                module.weight.copy_(uniform(module.weight.shape, 0.5, 1.5))
                module.bias.copy_(uniform(module.bias.shape, -0.2, 0.2))
            elif isinstance(module, Scale):
                module.scale.copy_(uniform((), 0.5, 1.5))
        getattr(net.bbox_head, f"{net.bbox_head.prefix}_cls").bias.copy_(uniform((80,), cls_bias - 0.5, cls_bias + 0.5))
    return net.eval()


RAY_CHANNELS_FACING_BOX_SIDES = {"fcos": (0, 27, 18, 9), "polar": (27, 18, 9, 0)}
"""Per head naming, the mask channels whose rays point at the box sides l, t, r, b (facts section 3:
old channels 0/9/18/27 point left/down/right/up, HEAD ones down/right/up/left)."""


def align_rays_with_boxes(net):
    """Makes the rays pointing left/up/right/down equal the box branch's l/t/r/b exactly, in the
    net's own ray order (the mask tower becomes a copy of the reg tower): what a trained model
    does approximately, for testing the ray-order check."""
    head = net.bbox_head
    p = head.prefix
    with torch.no_grad():
        head.mask_convs.load_state_dict(head.reg_convs.state_dict())
        head.scales_mask.load_state_dict(head.scales_bbox.state_dict())
        mask, reg = getattr(head, f"{p}_mask"), getattr(head, f"{p}_reg")
        for side, channel in enumerate(RAY_CHANNELS_FACING_BOX_SIDES[p]):
            mask.weight[channel] = reg.weight[side]
            mask.bias[channel] = reg.bias[side]
    return net


def dense_outputs(net, images_nhwc):
    """The network on a float32 NHWC numpy batch -> per-level numpy dicts in NHWC, in the
    network's own ray order (cls [B, h, w, 80], centerness [B, h, w], bbox [B, h, w, 4], mask [B, h, w, 36])."""
    with torch.no_grad():
        outputs = net(torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2))))
    return [{key: value.permute(0, 2, 3, 1).numpy().squeeze(-1) if key == "centerness" else
             value.permute(0, 2, 3, 1).numpy() for key, value in level.items()} for level in outputs]


def decode_rays(x, y, rays, prefix):
    """The original's distance2mask: contour points [..., 36, 2] of rays [..., 36] from (x, y)
    for its two conventions (old "fcos" files: x - d cos, y + d sin; HEAD "polar": x + d sin, y + d cos)."""
    theta = np.arange(0, 360, 10, dtype=np.float32) * np.float32(np.pi / 180)
    if prefix == "fcos":
        dx, dy = -rays * np.cos(theta), rays * np.sin(theta)
    else:
        dx, dy = rays * np.sin(theta), rays * np.cos(theta)
    return np.stack([x[..., None] + dx, y[..., None] + dy], axis=-1)


def _nms(boxes, scores, threshold):
    """Greedy NMS with "+1" areas, suppressing IoU > threshold (the original's CUDA kernel)."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    while len(order):
        i, rest = order[0], order[1:]
        keep.append(i)
        x1 = np.maximum(boxes[i, 0], boxes[rest, 0])
        y1 = np.maximum(boxes[i, 1], boxes[rest, 1])
        x2 = np.minimum(boxes[i, 2], boxes[rest, 2])
        y2 = np.minimum(boxes[i, 3], boxes[rest, 3])
        overlap = np.maximum(x2 - x1 + 1, 0) * np.maximum(y2 - y1 + 1, 0)
        area = lambda b: (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
        iou = overlap / (area(boxes[i]) + area(boxes[rest]) - overlap)
        order = rest[iou <= threshold]
    return np.array(keep, int)


def original_detections(levels, image_shape, scale, prefix, nms_pre=1000, score_thr=0.05, iou_thr=0.5, max_per_img=100):
    """The original's inference (spec section 5) on one image's dense outputs (`dense_outputs`,
    batch index 0). image_shape: (h, w) of the resized, unpadded image; scale: (sy, sx).
    Returns boxes [n, 4], scores [n], classes [n] (1..80) and contours [n, 36, 2] in original
    pixels, sorted by descending score."""
    height, width = image_shape
    sy, sx = scale
    all_boxes, all_probs, all_ctr, all_contours = [], [], [], []
    for stride, level in zip(STRIDES, levels, strict=True):
        h, w = level["cls"].shape[1:3]
        ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        x = (xs * stride + stride // 2).reshape(-1).astype(np.float32)
        y = (ys * stride + stride // 2).reshape(-1).astype(np.float32)
        probs = 1 / (1 + np.exp(-level["cls"][0].reshape(-1, 80).astype(np.float64)))
        ctr = 1 / (1 + np.exp(-level["centerness"][0].reshape(-1).astype(np.float64)))
        bbox = level["bbox"][0].reshape(-1, 4)
        rays = level["mask"][0].reshape(-1, 36)
        if len(probs) > nms_pre:
            top = np.argsort(-(probs.max(1) * ctr), kind="stable")[:nms_pre]
            x, y, probs, ctr, bbox, rays = x[top], y[top], probs[top], ctr[top], bbox[top], rays[top]
        boxes = np.stack([x - bbox[:, 0], y - bbox[:, 1], x + bbox[:, 2], y + bbox[:, 3]], -1)
        boxes = np.clip(boxes, 0, [width - 1, height - 1, width - 1, height - 1])
        contours = decode_rays(x, y, rays, prefix)
        contours = np.clip(contours, 0, [width - 1, height - 1])
        all_boxes.append(boxes / [sx, sy, sx, sy])
        all_contours.append(contours / [sx, sy])
        all_probs.append(probs)
        all_ctr.append(ctr)
    boxes, probs = np.concatenate(all_boxes), np.concatenate(all_probs)
    ctr, contours = np.concatenate(all_ctr), np.concatenate(all_contours)
    kept = []
    for c in range(80):
        candidates = np.nonzero(probs[:, c] > score_thr)[0]
        scores = probs[candidates, c] * (ctr[candidates] + 0.5)
        for i in _nms(boxes[candidates], scores, iou_thr):
            kept.append((scores[i], c + 1, candidates[i]))
    kept.sort(key=lambda entry: -entry[0])
    kept = kept[:max_per_img]
    index = np.array([k[2] for k in kept], int)
    return {
        "boxes": boxes[index].reshape(-1, 4),
        "scores": np.array([k[0] for k in kept]),
        "classes": np.array([k[1] for k in kept], int),
        "contours": contours[index].reshape(-1, 36, 2),
    }
