"""No-training check for IADM's target: how much of the contrastive-loss GradCAM falls on the bird?

The synthetic generator knows where every bird is (``engine.synth.bird.render_bird_scene`` returns its part
mask). For the ablation's world and the ablation's start (ImageNet EfficientNet-Lite0 at 96 px, a fresh MoCo
projection head, a queue of other images' keys), each image is the MoCo query (unaugmented, so the map lines
up with the mask) against an augmented key of itself; the CAM of ``L_moco`` is taken on the input image (the
paper's layer0) and on layer4 (LCR), with both gradient signs (``ReLU(sum_c S * dL/dS)`` as the trainer uses,
and ``ReLU(-sum_c S * dL/dS)``). Reported: the share of CAM mass on bird pixels, against the share of the image
the bird covers (what a uniform map would score). ``cam_layer`` is chosen from this, never from test scores.

    python -m benchmarks.cam_mass --images 192 --md benchmarks/results/cam_mass.md
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import machine_info, to_jsonable, write_results


def world_images(n: int, classes: int, size: int, clutter: str, seed: int):
    """(PIL image, bird mask bool (size, size)) pairs rendered exactly as ``ppssl synth`` renders them."""
    from engine.synth.attributes import select_classes
    from engine.synth.bird import render_bird_scene

    specs = select_classes(classes, seed)
    out = []
    for i in range(n):
        label, index = i % classes + 1, i // classes + 1
        scene, _ = render_bird_scene(specs[label - 1].attributes, np.random.default_rng([seed, 1, label, index]),
                                     size, clutter)
        out.append((scene.image, np.asarray(scene.mask) > 0))
    return out


def cam_shares(images, input_size: int, queue_size: int, batch: int, seed: int) -> dict:
    from engine.encoder import create_encoder
    from training.losses import infonce_loss
    from training.moco import MomentumEncoder, Student

    torch.manual_seed(seed)
    enc = create_encoder("efficientnet_lite0", "imagenet", input_size=input_size)
    student = Student(enc, 1280, 128, hook_stage="layer4")
    momentum = MomentumEncoder(student)
    student.eval(), momentum.eval()  # BN statistics frozen, as the ablation trains (freeze_bn)
    tf_eval = enc.transform()
    from torchvision.transforms import v2

    tf_key = v2.Compose([v2.ToImage(), v2.RandomResizedCrop(input_size, scale=(0.2, 1.0), antialias=True),
                         v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True),
                         v2.Normalize(enc.config.mean, enc.config.std)])
    with torch.no_grad():  # the queue: keys of other images, as after the first steps of training
        others = torch.stack([tf_key(im) for im, _ in images[::-1][:queue_size]])
        queue = momentum(others)  # (K, D)
    sums = {k: [] for k in ("input +", "input -", "layer4 +", "layer4 -")}
    bird_area = []
    for s in range(0, len(images), batch):
        chunk = images[s:s + batch]
        x = torch.stack([tf_eval(im) for im, _ in chunk]).requires_grad_(True)
        with torch.no_grad():
            k = momentum(torch.stack([tf_key(im) for im, _ in chunk]))
        out = student(x)
        loss = infonce_loss(out["q"], k, queue, 0.2)
        stage = out["stages"]["layer4"]
        g_in, g_l4 = torch.autograd.grad(loss, (x, stage))
        raw = {"input": (x.detach() * g_in).sum(1, keepdim=True),
               "layer4": F.interpolate((stage.detach() * g_l4).sum(1, keepdim=True), size=x.shape[-2:],
                                       mode="bilinear", align_corners=False)}
        masks = torch.stack([_mask_to_input(m, input_size) for _, m in chunk])[:, None]
        for name, r in raw.items():
            for sign, cam in (("+", F.relu(r)), ("-", F.relu(-r))):
                mass = cam.flatten(1).sum(1)
                on = (cam * masks).flatten(1).sum(1)
                sums[f"{name} {sign}"] += (on / mass.clamp_min(1e-12)).tolist()
        bird_area += masks.flatten(1).mean(1).tolist()
    return {"share_on_bird": {k: float(np.mean(v)) for k, v in sums.items()},
            "share_on_bird_sd": {k: float(np.std(v)) for k, v in sums.items()},
            "bird_area": float(np.mean(bird_area)), "images": len(images)}


def _mask_to_input(mask: np.ndarray, input_size: int) -> torch.Tensor:
    """The bird mask through the eval transform's geometry (resize the short side, centre crop)."""
    from engine.preprocess import resize_size

    m = torch.from_numpy(mask.astype(np.float32))[None, None]
    r = resize_size(input_size)
    h, w = mask.shape
    scale = r / min(h, w)
    m = F.interpolate(m, size=(round(h * scale), round(w * scale)), mode="bilinear", align_corners=False)
    top, left = (m.shape[-2] - input_size) // 2, (m.shape[-1] - input_size) // 2
    return (m[0, 0, top:top + input_size, left:left + input_size] > 0.5).float()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=192)
    ap.add_argument("--classes", type=int, default=24)
    ap.add_argument("--size", type=int, default=96, help="rendered image side (the ablation world's)")
    ap.add_argument("--input-size", type=int, default=96, help="encoder input (the ablation's)")
    ap.add_argument("--clutter", default="high")
    ap.add_argument("--queue", type=int, default=64, help="queue keys (the ablation's queue_size)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--md", default=None, help="write a markdown report here (and .json beside it)")
    args = ap.parse_args(argv)
    info = machine_info()
    t = time.time()
    imgs = world_images(args.images, args.classes, args.size, args.clutter, args.seed)
    res = cam_shares(imgs, args.input_size, args.queue, args.batch, args.seed)
    res.update(vars(args), seconds=round(time.time() - t, 1))
    for k, v in res["share_on_bird"].items():
        print(f"{k:>9}: {100 * v:5.1f} % of CAM mass on the bird (bird covers {100 * res['bird_area']:.1f} %)")
    if args.md:
        rows = "\n".join(f"| {k} | {100 * v:.1f} | {100 * res['share_on_bird_sd'][k]:.1f} | "
                         f"{v / res['bird_area']:.2f} |" for k, v in res["share_on_bird"].items())
        best = max(res["share_on_bird"], key=res["share_on_bird"].get)
        body = (
            f"Wall time {res['seconds']} s.\n\n"
            f"{args.images} images of the ablation world (seed {args.seed}, {args.classes} classes, {args.size} px, "
            f"clutter {args.clutter}) with the generator's bird masks; ImageNet EfficientNet-Lite0 at "
            f"{args.input_size} px, fresh projection head, {args.queue} queued keys of other images; the CAM of "
            "L_moco for the unaugmented query against an augmented key. `+` is the trainer's "
            "ReLU(sum_c S * dL/dS), `-` the opposite sign.\n\n"
            f"The bird covers {100 * res['bird_area']:.1f} % of the input on average (a uniform map's share).\n\n"
            "| CAM source, sign | share of CAM mass on the bird % | sd over images % | ratio to the bird's area |\n"
            f"|---|---|---|---|\n{rows}\n\n"
            f"Most bird-centred: **{best}**.\n")
        md = Path(args.md)
        write_results(md.stem, to_jsonable(res), body, title="IADM target check before training: CAM mass on the bird",
                      info=info, out_dir=md.parent)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
