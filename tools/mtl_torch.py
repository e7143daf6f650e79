"""mtl's models rebuilt in PyTorch, from a run's config, so that `torch.load` of an exported
checkpoint (tools/h5_to_torch.py) reproduces mtl's predictions.

    import torch, mtl_torch                      # tools/ on sys.path
    saved = torch.load("model.pth")
    model = mtl_torch.build(saved["config"], saved["out_channels"])
    model.load_state_dict(saved["state_dict"], strict=True)
    preds = model.eval()(images)                 # {task: [N, C_t, H, W]}, as `mtl predict --raw`

Encoders: resnet18/34/50/101 (torchvision, `replace_stride_with_dilation` for model.output_stride
8 or 16: LibMTL's resnet_dilated), hrnet18s/hrnet18 (tools/hrnet_reference.py's HRNetV2 with
mmseg's bilinear fuse; `model.fuse_upsample: nearest` is timm's, use timm's module for it), swin_t/s/b
(tools/ref_layers.py's dense Swin). Heads: deeplab (torchvision's ASPP + 3×3 conv-BN-ReLU + 1×1,
with model.head_channels and the rates mtl uses for the output stride), bench, multiscale (MTI-Net's
HRNet baseline head). Names are mtl's checkpoint names: `encoder.*`, `heads.<task>.*`. The ASPP
projection's Dropout is an identity in eval mode, where mtl never applies it.
"""
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _yaml(config):
    if isinstance(config, dict):
        return config
    import yaml
    return yaml.safe_load(config)


class ResNetEncoder(nn.Module):
    """torchvision's ResNet without avgpool/fc, its modules at the top level so that the names are
    torchvision's (conv1.weight, layer1.0.bn1.running_mean, ...)."""

    def __init__(self, depth, output_stride, width):
        super().__init__()
        import torchvision
        if width != 64:
            raise SystemExit(f"model.width: torchvision's ResNet has width 64, found {width}")
        if depth in (50, 101):
            dilation = {8: [False, True, True], 16: [False, False, True]}[output_stride]
            net = getattr(torchvision.models, f"resnet{depth}")(weights=None, replace_stride_with_dilation=dilation)
        else:
            # torchvision's BasicBlock refuses dilation: LibMTL/MTAN's resnet_dilated rule, which for
            # Bottlenecks is the same as replace_stride_with_dilation.
            net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
            for layer, rate in ([(net.layer3, 2), (net.layer4, 4)] if output_stride == 8 else [(net.layer4, 2)]):
                for m in layer.modules():
                    if isinstance(m, nn.Conv2d):
                        if m.stride == (2, 2):
                            m.stride = (1, 1)
                            if m.kernel_size == (3, 3):
                                m.dilation, m.padding = (rate // 2, rate // 2), (rate // 2, rate // 2)
                        elif m.kernel_size == (3, 3):
                            m.dilation, m.padding = (rate, rate), (rate, rate)
        for k, v in net.named_children():
            if k not in ("avgpool", "fc"):
                self.add_module(k, v)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return [self.layer4(self.layer3(self.layer2(self.layer1(x))))]


class DeepLabHead(nn.Sequential):
    """torchvision's DeepLabHead with a configurable width (names 0.convs.*, 0.project.*, 1, 2, 4)."""

    def __init__(self, cin, classes, channels, rates):
        from torchvision.models.segmentation.deeplabv3 import ASPP
        super().__init__(ASPP(cin, rates, channels), nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, classes, 1))

    def forward(self, features):
        return super().forward(features[0])


class BenchHead(nn.Module):
    def __init__(self, cin, classes, channels):
        super().__init__()
        self.branches = nn.ModuleList(nn.Conv2d(cin, channels, 3, padding=d, dilation=d) for d in (1, 6, 12))
        self.out = nn.Conv2d(channels, classes, 1)

    def forward(self, features):
        z = features[0]
        return self.out(sum(F.relu(b(z)) for b in self.branches))


class MultiScaleHead(nn.Module):
    def __init__(self, cins, classes, channels):
        super().__init__()
        self.last_layer = nn.Sequential(nn.Conv2d(sum(cins), channels, 1), nn.BatchNorm2d(channels), nn.ReLU(),
                                        nn.Conv2d(channels, classes, 1))

    def forward(self, features):
        size = features[0].shape[-2:]
        parts = [features[0]] + [F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in features[1:]]
        return self.last_layer(torch.cat(parts, 1))


class MultiTaskModel(nn.Module):
    def __init__(self, encoder, heads, channels):
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleDict(heads)

    def forward(self, x):
        features = self.encoder(x)
        return {t: F.interpolate(h(features), size=x.shape[-2:], mode="bilinear", align_corners=False)
                for t, h in self.heads.items()}


def build(config, out_channels):
    """The model of a resolved mtl config (YAML text or dict); `out_channels`: {task: channels}."""
    c = _yaml(config)
    m = c["model"]
    name = m["encoder"]
    if name.startswith("resnet"):
        encoder = ResNetEncoder(int(name[6:]), m["output_stride"], m["width"])
        channels = [512 if name in ("resnet18", "resnet34") else 2048]
    elif name in ("hrnet18s", "hrnet18"):
        import hrnet_reference
        if m.get("fuse_upsample", "bilinear") != "bilinear":
            raise SystemExit("model.fuse_upsample: nearest is timm's HRNet; build it with timm (hrnet_w18_small_v2)")
        encoder = hrnet_reference.SpecHRNet(hrnet_reference.ARCHS["w18_small" if name == "hrnet18s" else "w18"])
        channels = [18, 36, 72, 144]
    elif name in ("swin_t", "swin_s", "swin_b"):
        import ref_layers
        encoder = ref_layers.SwinDense(name, window=m.get("swin", {}).get("window", 7) if isinstance(m.get("swin"), dict) else 7)
        channels = list(encoder.channels)
    else:
        raise SystemExit(f"model.encoder: {name} has no PyTorch rebuild here (expected resnet18/34/50/101, hrnet18s, hrnet18, swin_t/s/b)")
    head, width = m["head"], m["head_channels"]
    rates = (12, 24, 36) if m.get("output_stride", 8) == 8 else (6, 12, 18)
    heads = {}
    for task, k in out_channels.items():
        if head == "deeplab":
            heads[task] = DeepLabHead(channels[0], k, width, rates)
        elif head == "bench":
            heads[task] = BenchHead(channels[0], k, width)
        elif head == "multiscale":
            heads[task] = MultiScaleHead(channels, k, width)
        else:
            raise SystemExit(f"model.head: {head} has no PyTorch rebuild here (expected deeplab, bench, multiscale)")
    return MultiTaskModel(encoder, heads, channels)
