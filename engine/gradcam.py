"""Explanations of a retrieval: the model's own attention map A and a retrieval GradCAM.

Retrieval GradCAM (after Selvaraju et al., adapted to similarity search): the class score of classic
GradCAM is replaced by the similarity ``s = f(result) · f(query)`` of the two L2-normalised features.
Its gradient with respect to the result's last feature map ``F`` weights the channels
(``w_c = mean_hw ds/dF_c``) and ``cam = ReLU(sum_c w_c F_c)`` shows where the *result* image holds
what made it similar to the query. The computation is pytorch-grad-cam's ``GradCAM`` with the small
:class:`SimilarityTarget`; heatmaps are normalised to ``[0, 1]`` the way that library does.

All maps are returned on the *display crop*: the same resize + centre-crop geometry as the encoder's
evaluation transform (:func:`engine.preprocess.eval_transform`) at a display resolution, so a heatmap
lines up pixel for pixel with the image it is drawn on.
"""

from __future__ import annotations

import copy
import threading
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image

from engine.embed import images_to_batch
from engine.preprocess import resize_size

#: Hooks live on the module they are registered on; one GradCAM at a time per process keeps
#: concurrent sessions of the UI from recording each other's activations.
_CAM_LOCK = threading.Lock()


class SimilarityTarget:
    """GradCAM target: the inner product of the model output with a fixed query feature.

    Args:
        query_feature: the query's L2-normalised feature, shape ``(C,)``; it is treated as a constant.
    """

    def __init__(self, query_feature: torch.Tensor | np.ndarray):
        self.query = torch.as_tensor(np.asarray(query_feature, dtype=np.float32)).flatten()

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return (model_output * self.query.to(model_output.device, model_output.dtype)).sum()


def display_crop(image: Image.Image, input_size: int, size: int | None = None, view: str = "center",
                 mean=(0.485, 0.456, 0.406)) -> np.ndarray:
    """What the encoder sees of ``image`` (its ``view``: engine.preprocess.view_transform) at ``size`` pixels, as
    float32 RGB in ``[0, 1]``, so maps computed on the ``input_size`` input align with it.

    ``center``: short side to ``256/224 * size``, centre crop; ``full`` / ``pad``: the view transform itself at
    ``size`` (the whole photo, resized or padded with the encoder's ``mean`` colour). ``size`` defaults to
    ``max(input_size, 224)``.
    """
    size = size or max(input_size, 224)
    if view != "center":
        from engine.preprocess import view_transform

        x = view_transform(view, size, mean, (1.0, 1.0, 1.0))(image.convert("RGB"))  # pads with the mean colour
        return (x + torch.tensor(list(mean)).view(3, 1, 1)).permute(1, 2, 0).numpy().astype(np.float32)
    w, h = image.size
    side = min(w, h) * size / resize_size(size)  # the crop's side in original pixels
    left, top = (w - side) / 2, (h - side) / 2
    # Crop first, then resample only the crop: a 20000x10 panorama never becomes a huge intermediate.
    crop = image.convert("RGB").resize((size, size), Image.BILINEAR, box=(left, top, left + side, top + side))
    return np.asarray(crop, dtype=np.float32) / 255.0


def _normalise(cam: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's per-image normalisation: shift to 0, divide by (max + 1e-7)."""
    cam = cam - cam.min()
    return (cam / (cam.max() + 1e-7)).astype(np.float32)


def _resize_map(cam: np.ndarray, size: int) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(cam, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()


@torch.no_grad()
def attention_maps(encoder, images: Sequence[Image.Image], size: int | None = None) -> list[np.ndarray]:
    """The model's own attention map ``A = encoder.attention(F)`` for each image, on the display crop.

    Returns:
        One float32 ``(size, size)`` map per image, normalised to ``[0, 1]``.
    """
    if not images:
        return []
    size = size or max(encoder.config.input_size, 224)
    was_training = encoder.training
    encoder.eval()
    try:
        attn = encoder.attention(encoder.forward_features(images_to_batch(encoder, images))).float().cpu().numpy()
    finally:
        encoder.train(was_training)
    return [_normalise(_resize_map(a[0], size)) for a in attn]


def attention_overlay(encoder, image: Image.Image, size: int | None = None) -> np.ndarray:
    """The attention map A of one image, upsampled to its display crop (``[0, 1]`` float32)."""
    return attention_maps(encoder, [image], size)[0]


def cam_model(encoder) -> torch.nn.Module:
    """A private copy of ``encoder`` for GradCAM: frozen parameters, eval mode.

    GradCAM registers hooks and runs backward passes; doing that on a copy leaves the encoder that
    serves searches untouched (no hooks firing in other threads, no accumulated ``.grad``).
    """
    model = copy.deepcopy(encoder).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def retrieval_gradcam(model, query_feature: np.ndarray | torch.Tensor, images: Sequence[Image.Image],
                      layer: str | None = None, size: int | None = None) -> list[np.ndarray]:
    """GradCAM of ``query · f(image)`` with respect to ``image``'s feature map at ``layer``.

    Args:
        model: an encoder (preferably a :func:`cam_model` copy) whose ``forward`` returns the
            L2-normalised feature.
        query_feature: the query's feature ``(C,)``, L2-normalised like the index.
        images: the result images to explain.
        layer: backbone stage to explain; None = the deepest (the feature map the retrieval feature pools).
        size: side of the returned maps (the display crop); default ``max(input_size, 224)``.

    Returns:
        One float32 ``(size, size)`` heatmap in ``[0, 1]`` per image (all zeros when no location
        raises the similarity).
    """
    if not images:
        return []
    size = size or max(model.config.input_size, 224)
    stages = model.backbone.stages
    layer = layer or model.backbone.last_stage
    if layer not in stages:
        raise ValueError(f"unknown layer {layer!r}; choose one of {sorted(stages)}")
    x = images_to_batch(model, images).requires_grad_(True)  # frozen weights: the input carries the graph
    target = SimilarityTarget(query_feature)
    with _CAM_LOCK, torch.enable_grad(), GradCAM(model=model, target_layers=[stages[layer]]) as cam:
        maps = cam(input_tensor=x, targets=[target] * len(images))
    out = []
    for m in maps:  # already normalised by the library at the input size; only resample to the display
        if m.max() <= 0:
            out.append(np.zeros((size, size), np.float32))
        else:
            out.append(m.astype(np.float32) if m.shape == (size, size) else _normalise(_resize_map(m, size)))
    return out


def overlay(rgb: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a ``[0, 1]`` heatmap (JET colours) over a float RGB image in ``[0, 1]``.

    Args:
        rgb: ``(H, W, 3)`` float image in ``[0, 1]`` (e.g. :func:`display_crop`).
        heatmap: ``(H, W)`` map in ``[0, 1]``.
        alpha: opacity of the heatmap, 0 (image only) to 1 (heatmap only).

    Returns:
        ``(H, W, 3)`` uint8 RGB image.
    """
    if rgb.shape[:2] != heatmap.shape:
        raise ValueError(f"image {rgb.shape[:2]} and heatmap {heatmap.shape} differ in size")
    alpha = float(min(max(alpha, 0.0), 1.0))
    if alpha == 0.0:
        return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)
    return show_cam_on_image(np.clip(rgb, 0, 1).astype(np.float32), np.clip(heatmap, 0, 1),
                             use_rgb=True, image_weight=1.0 - alpha)
