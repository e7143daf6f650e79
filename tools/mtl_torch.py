"""mtl's models rebuilt in PyTorch, from a run's config, so that `torch.load` of an exported
checkpoint (tools/h5_to_torch.py) reproduces mtl's predictions.

    import torch, mtl_torch                      # tools/ on sys.path
    saved = torch.load("model.pth", weights_only=False)
    model = mtl_torch.build(saved["config"], saved["out_channels"])
    model.load_state_dict(saved["state_dict"], strict=True)
    preds = model.eval()(images)                 # {task: [N, C_t, H, W]}, as `mtl predict --raw`

Every name is mtl's checkpoint name (`encoder.*`, `neck.*`, `heads.<task>.*`, `decoder.*`), so the state_dict
loads with strict=True. What each part is built from:

  encoder resnet18/34/50/101  torchvision, `replace_stride_with_dilation` for model.output_stride 8/16
                              (LibMTL's resnet_dilated rule for the BasicBlock ResNets)
  encoder hrnet18s/hrnet18    fuse_upsample bilinear: tools/hrnet_reference.py's HRNetV2 (mmseg's fuse);
                              nearest: timm's hrnet_w18_small_v2 / hrnet_w18, features_only with
                              feature_location='' (the same names; timm's fuse is nearest)
  encoder swin_t/s/b          tools/ref_layers.py's dense Swin (pad then roll, norm0..3), model.swin.window;
                              shift_rule classification has no from-spec rebuild: use timm_encoder
  head deeplab                torchvision's ASPP + 3×3 conv-BN-ReLU + 1×1 (model.head_channels, mtl's rates)
  head bench, multiscale      below (multiscale: MTI-Net's HRNet baseline head)
  head tif                    tools/tif_reference.py's TIFDecoder (SAFF, SFD, LTHD, fusion, heads; model.tif.*)
  head kem                    tools/kem_reference.py's KEMDecoder (model.kem.*: mixer, dim, heads, window,
                              depth, slots, top-k, sKEM's ETF from the checkpoint's buffer)
  neck fpn                    tools/bench_mtcp_torch.py's FPNLite (`neck.*`, width model.mtcp.dim), before
                              mtcp or any per-task head
  head mtcp                   tools/mtcp_reference.py's MTCPDecoder (model.mtcp.*: variant, cfm_stride, dim,
                              depths, heads, window, reduction, depth_mid, head_layout, query_block) with
                              mtl's heads by task name; MTCPModel.predictions() adds the intermediate outputs

The from-spec references hold BatchNorm that always uses batch statistics; here every one is replaced
by nn.BatchNorm2d with the same parameter names (plus running statistics), so eval() predicts with
the running statistics as `mtl predict` does. The ASPP projection's Dropout is an identity in eval
mode, where mtl never applies it.

`timm_encoder(config, saved["encoder"], image_size=(H, W), encoder_norms=saved.get("encoder_norms"))`
gives the encoder as the timm module a researcher would load (HRNet: hrnet_w18_small_v2 / hrnet_w18
features_only, feature_location=''; Swin: swin_*_patch4_window7_224 features_only at the input size,
followed by the dense variant's output norms norm0..3), loaded with strict=True; it returns mtl's
Features and can replace `model.encoder`. It equals mtl for HRNet with model.fuse_upsample nearest
and for Swin where every stage's map is a multiple of the window (224² for window 7).
"""
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

HRNET_TIMM = {"hrnet18s": ("w18_small", "hrnet_w18_small_v2"), "hrnet18": ("w18", "hrnet_w18")}
SWIN_TIMM = {"swin_t": "swin_tiny_patch4_window7_224", "swin_s": "swin_small_patch4_window7_224",
             "swin_b": "swin_base_patch4_window7_224"}


def _yaml(config):
    if isinstance(config, dict):
        return config
    import yaml
    return yaml.safe_load(config)


def _swin_options(m):
    s = m.get("swin") if isinstance(m.get("swin"), dict) else {}
    return int(s.get("window", 7)), s.get("shift_rule", "dense")


def with_running_statistics(module):
    """Replaces every ref_layers.BN (batch statistics always) by nn.BatchNorm2d with the same weight
    and bias, so that train()/eval() choose batch or running statistics as in mtl."""
    import ref_layers
    for name, child in list(module.named_children()):
        if isinstance(child, ref_layers.BN):
            bn = nn.BatchNorm2d(child.weight.numel(), eps=1e-5, dtype=child.weight.dtype)
            with torch.no_grad():
                bn.weight.copy_(child.weight)
                bn.bias.copy_(child.bias)
            setattr(module, name, bn)
        else:
            with_running_statistics(child)
    return module


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


def timm_hrnet(name):
    """timm's HRNet backbone without any head: features_only, feature_location='' (the four branch
    outputs, nearest fuse upsampling). Its state_dict names are mtl's encoder names."""
    import timm
    return timm.create_model(HRNET_TIMM[name][1], pretrained=False, features_only=True, feature_location="",
                             out_indices=(1, 2, 3, 4))


class TimmSwinFeatures(nn.Module):
    """timm's Swin features_only (the four stages' raw outputs, NHWC) followed by the dense variant's
    output norms norm0..norm3, which timm does not have; returns NCHW maps as mtl's Features."""

    def __init__(self, timm_model, channels):
        super().__init__()
        self.timm = timm_model
        self.norms = nn.ModuleList(nn.LayerNorm(c, eps=1e-5) for c in channels)

    def forward(self, x):
        return [n(f).permute(0, 3, 1, 2) for n, f in zip(self.norms, self.timm(x))]


def timm_swin(name, window, shift_rule, image_size):
    """timm's Swin at `image_size`: always_partition for the dense rule (every odd block shifts, as
    mtl's dense rule), timm's own rule for classification. Equal to mtl where every stage's map is a
    multiple of the window (timm rolls before padding, the dense code pads before rolling)."""
    import timm
    return timm.create_model(SWIN_TIMM[name], pretrained=False, features_only=True, img_size=tuple(image_size),
                             window_size=window, always_partition=shift_rule == "dense")


def timm_encoder(config, encoder_state, image_size=None, encoder_norms=None):
    """The exported encoder (h5_to_torch's `encoder`, `encoder_norms`) in its timm module, loaded with
    strict=True. Swin needs the input size (timm builds its attention masks for one size)."""
    m = _yaml(config)["model"]
    name = m["encoder"]
    if name in HRNET_TIMM:
        if m.get("fuse_upsample", "bilinear") != "nearest":
            raise SystemExit(f"timm's HRNet fuses with nearest upsampling; this run has model.fuse_upsample "
                             f"{m.get('fuse_upsample', 'bilinear')} (use build()'s from-spec HRNet)")
        net = timm_hrnet(name)
        net.load_state_dict(encoder_state, strict=True)
        return net
    if name in SWIN_TIMM:
        if image_size is None:
            raise SystemExit("timm_encoder: a Swin encoder needs image_size=(H, W)")
        window, rule = _swin_options(m)
        net = timm_swin(name, window, rule, image_size)
        net.load_state_dict(encoder_state, strict=True)
        channels = [net.feature_info.channels()[i] for i in range(4)]
        enc = TimmSwinFeatures(net, channels)
        enc.norms.load_state_dict(_norm_list(encoder_norms), strict=True)
        return enc
    raise SystemExit(f"model.encoder: {name} has no timm counterpart here (hrnet18s, hrnet18, swin_t/s/b)")


def _norm_list(norms):
    """{norm0.weight: ..} → nn.ModuleList names {0.weight: ..}."""
    return {k[len("norm"):]: v for k, v in norms.items()}


def build_encoder(m):
    """The encoder of model config `m` under mtl's names, and its feature channels."""
    name = m["encoder"]
    if name.startswith("resnet"):
        return ResNetEncoder(int(name[6:]), m["output_stride"], m["width"]), \
            [512 if name in ("resnet18", "resnet34") else 2048]
    if name in HRNET_TIMM:
        if m.get("fuse_upsample", "bilinear") == "nearest":
            return timm_hrnet(name), [18, 36, 72, 144]
        import hrnet_reference
        return hrnet_reference.SpecHRNet(hrnet_reference.ARCHS[HRNET_TIMM[name][0]]), [18, 36, 72, 144]
    if name in SWIN_TIMM:
        import ref_layers
        window, rule = _swin_options(m)
        if rule != "dense":
            raise SystemExit(f"model.swin.shift_rule: {rule} has no from-spec rebuild (ref_layers' Swin is the dense "
                             f"rule); mtl_torch.timm_encoder gives timm's")
        encoder = ref_layers.SwinDense(name, window=window)
        return encoder, list(encoder.channels)
    raise SystemExit(f"model.encoder: {name} has no PyTorch rebuild here "
                     f"(expected resnet18/34/50/101, hrnet18s, hrnet18, swin_t/s/b)")


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
    """Encoder (+ the FPN-lite neck, whose one map z the heads read) + one head per task; each head's
    output is resized to the input (bilinear)."""

    def __init__(self, encoder, heads, neck=None):
        super().__init__()
        self.encoder = encoder
        self.neck = neck
        self.heads = nn.ModuleDict(heads)

    def forward(self, x):
        features = self.encoder(x)
        if self.neck is not None:
            features = [self.neck(features)]
        return {t: F.interpolate(h(features), size=x.shape[-2:], mode="bilinear", align_corners=False)
                for t, h in self.heads.items()}


class JointDecoderModel(nn.Module):
    """Encoder + a decoder that predicts every task at the input size (TIF, KEM)."""

    def __init__(self, encoder, decoder):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, x):
        return self.decoder(self.encoder(x), tuple(x.shape[-2:]))


def build_tif(m, channels, out_channels):
    """tif_reference's TIFDecoder with model.tif.*; SAFF's `decoder.saff.*` is mtl's shared neck."""
    import tif_reference
    t = m.get("tif") or {}
    sfd = bool(t.get("sfd", True))
    decoder = tif_reference.TIFDecoder(channels, dict(out_channels), saff=bool(t.get("saff", True)), sfd=sfd,
                                       lthd=bool(t.get("lthd", True)) and sfd, sfd_scale=bool(t.get("sfd_scale", False)),
                                       kv_single=bool(t.get("kv_single", False)),
                                       lthd_transpose=bool(t.get("lthd_transpose", False)),
                                       fuse_relu=bool(t.get("fuse_relu", False)))
    return with_running_statistics(decoder)


def kem_head(task, d, classes):
    """mtl's KEMHead rule: `depth` → the depth head, `sal`/`saliency` → no Up×2, else segmentation."""
    import kem_reference
    import ref_layers
    if task == "depth":
        head = kem_reference.DepthHead(d)
        if classes != 1:
            head.conv3 = ref_layers.Conv(32, classes, 1)
        return head
    return kem_reference.SegHead(d, classes, up=task not in ("sal", "saliency"))


def build_kem(m, channels, out_channels):
    """kem_reference's KEMDecoder with model.kem.*; the transformers and heads are rebuilt with mtl's
    heads/depth and head rule, and the reference's log-variances (mtl: the uw method's state) removed."""
    import kem_reference
    k = m.get("kem") or {}
    d, heads, window, depth = int(k.get("dim", 256)), int(k.get("heads", 4)), int(k.get("window", 7)), int(k.get("depth", 2))
    unused, mixer = bool(k.get("unused_patch_embed", True)), k.get("mixer", "memory")
    kem_kw = {}
    if mixer == "memory":
        kem_kw = dict(m=int(k.get("slots", 20)), k=int(k.get("topk", 3)), lam=float(k.get("lambda", 1.0)),
                      topk_variant={"masked": "A", "renormalized": "B"}[k.get("topk_variant", "masked")],
                      topk_axis=k.get("topk_axis", "tokens"), stable=bool(k.get("stable", False)),
                      etf_role=k.get("etf_role", "tasks"), etf_proj=bool(k.get("etf_projection", True)))
    decoder = kem_reference.KEMDecoder(dict(out_channels), d=d, in_channels=tuple(channels[1:]), mixer=mixer,
                                       allocate_unused=unused, window=window, **kem_kw)
    if mixer == "cross_attention":
        decoder.cross_attention.lam = float(k.get("lambda", 1.0))

    def transformer():
        return kem_reference.TaskTransformer(d, depth=depth, heads=heads, window=window, allocate_unused=unused)

    decoder.shared = transformer()
    for t in out_channels:
        decoder.task_enc[t] = transformer()
        decoder.task_dec[t] = transformer()
        decoder.head[t] = kem_head(t, d, out_channels[t])
    del decoder.log_vars
    return with_running_statistics(decoder)


class MTCPModel(nn.Module):
    """Encoder + FPN-lite neck (z at stride 4) + MT-CP's decoder. forward gives the final predictions at
    the input size, as `mtl predict --raw`; predictions() gives {task: {"final", "inter": [stride 16,
    stride 8]}}, the intermediate outputs mtl trains with each task's loss."""

    def __init__(self, encoder, neck, decoder):
        super().__init__()
        self.encoder = encoder
        self.neck = neck
        self.decoder = decoder

    def predictions(self, x):
        return self.decoder(self.neck(self.encoder(x)), tuple(x.shape[-2:]))

    def forward(self, x):
        return {t: o["final"] for t, o in self.predictions(x).items()}


def mtcp_specs(out_channels, layout):
    """mtl's MT-CP heads by task name (the released code's NYUD / PASCAL head sets) as mtcp_reference's
    specs {task: (channels, intermediate convs, final kind, final ×up)}; other tasks are built like NYUD's
    normals."""
    pascal = layout == "pascal"

    def spec(task):
        if task in ("seg", "semseg"):
            return 2, "seg", 4 if pascal else 2
        if task == "depth":
            return 2, "depth", 2
        if task in ("parts", "human_parts"):
            return 1 if pascal else 2, "seg", 4 if pascal else 2
        if task in ("sal", "saliency"):
            return 1 if pascal else 2, "plain", 1
        return 2, "plain", 1
    return {t: (k,) + spec(t) for t, k in out_channels.items()}


def build_mtcp(m, out_channels):
    """mtcp_reference's MTCPDecoder with model.mtcp.*; the CFM affinity by blocks of query_block query
    pixels as mtl (the same values as the dense N × N, in block × N memory)."""
    import mtcp_reference
    o = m.get("mtcp") or {}
    decoder = mtcp_reference.MTCPDecoder(
        d=int(o.get("dim", 256)), variant=o.get("variant", "code"), depths=tuple(o.get("depths", (1, 2, 1))),
        heads=tuple(o.get("heads", (2, 2, 2))), window=int(o.get("window", 7)), cfm_stride=int(o.get("cfm_stride", 4)),
        cfm_chunk=int(o.get("query_block", 256)), depth_mid=int(o.get("depth_mid", 32)),
        reduction=int(o.get("reduction", 16)), specs=mtcp_specs(out_channels, o.get("head_layout", "nyud")))
    return with_running_statistics(decoder)


def build(config, out_channels):
    """The model of a resolved mtl config (YAML text or dict); `out_channels`: {task: channels}."""
    m = _yaml(config)["model"]
    encoder, channels = build_encoder(m)
    head, width = m.get("decoder", m.get("head")), m["head_channels"]
    # config.yaml written before model.neck existed: the decoder's own neck
    neck_name, neck = m.get("neck", {"tif": "saff", "mtcp": "fpn"}.get(head, "none")), None
    if neck_name == "fpn":
        import bench_mtcp_torch
        d = int((m.get("mtcp") or {}).get("dim", 256))
        neck, channels = bench_mtcp_torch.FPNLite(tuple(channels), d), [d]
    elif neck_name != "none" and not (neck_name == "saff" and head == "tif"):
        raise SystemExit(f"model.neck: {neck_name} is rebuilt only inside the tif decoder (decoder.saff.*), found "
                         f"model.decoder {head}")
    if head == "mtcp":
        return MTCPModel(encoder, neck, build_mtcp(m, out_channels))
    if head in ("tif", "kem"):
        if len(channels) != 4:
            raise SystemExit(f"model.decoder: {head} needs a four-scale encoder, model.encoder {m['encoder']} has one")
        decoder = build_tif(m, channels, out_channels) if head == "tif" else build_kem(m, channels, out_channels)
        return JointDecoderModel(encoder, decoder)
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
            raise SystemExit(f"model.decoder: {head} has no PyTorch rebuild here "
                             f"(expected deeplab, bench, multiscale, tif, kem, mtcp)")
    return MultiTaskModel(encoder, heads, neck)
