"""PP-SSL losses on hand-computed tensors, the MoCo queue, and the input-gradient CAM against autograd."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.iadm import cam_target, gradient_cam
from training.losses import ais_kl_loss, attention_kl_loss, infonce_loss, map_to_distribution
from training.queue import MoCoQueue


# --- InfoNCE (Eq. 1) ---------------------------------------------------------------------------------

def test_infonce_hand_computed():
    q = torch.tensor([[1.0, 0.0]])
    k = torch.tensor([[1.0, 0.0]])
    queue = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    # logits / T = [1, 0, -1] / 0.5 = [2, 0, -2]; loss = -log(e^2 / (e^2 + 1 + e^-2))
    expected = -math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-2)))
    assert infonce_loss(q, k, queue, 0.5).item() == pytest.approx(expected, rel=1e-6)


def test_infonce_matches_numpy_reference():
    rng = np.random.default_rng(0)
    q, k, n = (rng.normal(size=s) for s in ((5, 8), (5, 8), (7, 8)))
    q, k, n = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (q, k, n))
    t = 0.2
    ref = []
    for i in range(5):
        pos = np.exp(q[i] @ k[i] / t)
        ref.append(-np.log(pos / (pos + np.exp(n @ q[i] / t).sum())))
    got = infonce_loss(*(torch.tensor(x, dtype=torch.float32) for x in (q, k, n)), temperature=t)
    assert got.item() == pytest.approx(float(np.mean(ref)), rel=1e-5)


def test_infonce_gradient_only_to_queries():
    q = F.normalize(torch.randn(4, 6), dim=1).requires_grad_(True)
    k = F.normalize(torch.randn(4, 6), dim=1).requires_grad_(True)
    queue = F.normalize(torch.randn(10, 6), dim=1).requires_grad_(True)
    infonce_loss(q, k, queue, 0.2).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert k.grad is None and queue.grad is None


# --- AIS KL (Eq. 4) ----------------------------------------------------------------------------------

def test_ais_kl_hand_computed_and_temperature():
    # teacher softmax([ln 3, 0]) = [0.75, 0.25]; student softmax([0, 0]) = [0.5, 0.5]
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    s = torch.zeros(1, 2)
    assert ais_kl_loss(s, torch.tensor([[math.log(3), 0.0]]), 1.0).item() == pytest.approx(expected, rel=1e-6)
    # tau divides both logit sets: tau=0.5 with halved teacher logits is the same distribution pair
    assert ais_kl_loss(s, torch.tensor([[math.log(3) / 2, 0.0]]), 0.5).item() == pytest.approx(expected, rel=1e-6)


def test_ais_kl_zero_when_equal_and_batch_mean():
    z = torch.randn(3, 8)
    assert ais_kl_loss(z, z.clone(), 0.1).item() == pytest.approx(0.0, abs=1e-6)
    a, b = torch.randn(2, 8), torch.randn(2, 8)
    both = ais_kl_loss(a, b, 0.3)
    each = (ais_kl_loss(a[:1], b[:1], 0.3) + ais_kl_loss(a[1:], b[1:], 0.3)) / 2
    assert both.item() == pytest.approx(each.item(), rel=1e-5)


def test_ais_kl_no_gradient_to_teacher():
    s = torch.randn(2, 8, requires_grad=True)
    t = torch.randn(2, 8, requires_grad=True)
    ais_kl_loss(s, t, 0.1).backward()
    assert s.grad is not None and t.grad is None


# --- IADM attention KL (Eq. 8) -----------------------------------------------------------------------

def test_map_to_distribution_sum_normalises_and_handles_zero():
    m = torch.tensor([[[[1.0, 3.0], [0.0, 0.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    p = map_to_distribution(m)
    assert torch.allclose(p[0], torch.tensor([0.25, 0.75, 0.0, 0.0]))
    assert torch.allclose(p[1], torch.full((4,), 0.25))


def test_attention_kl_hand_computed():
    cam = torch.tensor([[[[1.0, 3.0], [0.0, 0.0]]]])  # -> [0.25, 0.75, 0, 0]
    attn = torch.zeros(1, 1, 2, 2)  # softmax -> uniform 0.25
    expected = 0.25 * math.log(0.25 / 0.25) + 0.75 * math.log(0.75 / 0.25)
    assert attention_kl_loss(attn, cam, norm="softmax").item() == pytest.approx(expected, rel=1e-6)
    # a CAM scaled by any positive factor is the same target
    assert attention_kl_loss(attn, cam * 1e-6, norm="softmax").item() == pytest.approx(expected, rel=1e-5)
    # "sum": a constant map is uniform pooling weights too
    assert attention_kl_loss(attn + 2.0, cam).item() == pytest.approx(expected, rel=1e-5)


def test_attention_kl_minimised_when_softmax_matches():
    cam = torch.rand(2, 1, 3, 3) + 0.1
    p = map_to_distribution(cam).view(2, 1, 3, 3)
    assert attention_kl_loss(p.log(), cam, norm="softmax").item() == pytest.approx(0.0, abs=1e-6)
    # "sum": the loss is minimised by A proportional to the CAM, at any scale: A's own pooling weights
    for scale in (1e-3, 1.0, 50.0):
        assert attention_kl_loss(scale * p, cam).item() == pytest.approx(0.0, abs=2e-3)
    assert attention_kl_loss(p.flip(-1), cam).item() > 0.01
    with pytest.raises(ValueError):
        attention_kl_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 3, 3))


# --- queue ---------------------------------------------------------------------------------------------

def test_queue_enqueue_and_wraparound():
    qu = MoCoQueue(dim=2, size=5, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(qu.keys.norm(dim=1), torch.ones(5))
    a = torch.arange(6, dtype=torch.float32).view(3, 2)
    qu.enqueue(a, gather=False)
    assert int(qu.ptr) == 3 and torch.equal(qu.keys[:3], a)
    b = 10 + torch.arange(6, dtype=torch.float32).view(3, 2)
    before = qu.keys.clone()
    qu.enqueue(b, gather=False)  # slots 3, 4 then wraps to 0
    assert int(qu.ptr) == 1
    assert torch.equal(qu.keys[3:5], b[:2]) and torch.equal(qu.keys[0], b[2])
    assert torch.equal(qu.keys[1:3], before[1:3])  # untouched
    big = torch.arange(14, dtype=torch.float32).view(7, 2)
    qu.enqueue(big, gather=False)
    assert torch.equal(qu.keys, big[-5:]) and int(qu.ptr) == 0


# --- input-gradient CAM (Eq. 5-6) ----------------------------------------------------------------------

def _tiny_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 5, 3, 2, 1))


def test_input_cam_matches_manual_autograd():
    net = _tiny_net()
    queue = F.normalize(torch.randn(6, 5), dim=1)
    x = torch.randn(2, 3, 8, 8)
    k = F.normalize(torch.randn(2, 5), dim=1)

    def loss_of(inp):
        return infonce_loss(F.normalize(net(inp).mean(dim=(2, 3)), dim=1), k, queue, 0.2)

    xa = x.clone().requires_grad_(True)
    cam = gradient_cam(xa, loss_of(xa))
    # by hand: backward into a fresh leaf, then ReLU(sum over RGB of x * dL/dx)
    xb = x.clone().requires_grad_(True)
    loss_of(xb).backward()
    manual = torch.clamp((xb.detach() * xb.grad).sum(dim=1, keepdim=True), min=0)
    assert cam.shape == (2, 1, 8, 8)
    assert torch.allclose(cam, manual, atol=1e-7)
    assert not cam.requires_grad
    pooled = cam_target(cam, (4, 4))
    assert torch.allclose(pooled, F.avg_pool2d(manual, 2), atol=1e-7)


def test_layer_cam_matches_manual_autograd():
    net = _tiny_net()
    x = torch.randn(2, 3, 8, 8)
    fmap = net[:2](x)
    loss = net[2](fmap).pow(2).mean()
    cam = gradient_cam(fmap, loss)
    fmap2 = net[:2](x).detach().requires_grad_(True)
    net[2](fmap2).pow(2).mean().backward()
    manual = torch.relu((fmap2.detach() * fmap2.grad).sum(dim=1, keepdim=True))
    assert torch.allclose(cam, manual, atol=1e-7)


def test_iadm_moves_the_attention_map_towards_its_cam_target():
    """Minimising L_IADM alone (the attention head learnable, the backbone fixed) makes A pool where the CAM of the
    contrastive loss points: measured without the loss itself, the total variation between A's pooling weights and
    the CAM's distribution falls, and the attention-pooled feature turns towards the CAM-weighted pooling of F."""
    from engine.attention import attention_pool
    from engine.encoder import create_encoder

    torch.manual_seed(0)
    enc = create_encoder("tinycnn", pooling="attention").train()
    x = torch.randn(6, 3, 96, 96, requires_grad=True)
    fmap = enc.forward_features(x)
    q = F.normalize(attention_pool(fmap, enc.attention(fmap)), dim=1)
    keys = F.normalize(torch.randn(6, q.shape[1]), dim=1)  # positives: a fixed random key per image
    loss_moco = infonce_loss(q, keys, F.normalize(torch.randn(32, q.shape[1]), dim=1), 0.2)
    target = cam_target(gradient_cam(x, loss_moco), tuple(fmap.shape[-2:]))  # as the trainer takes it
    fmap = fmap.detach()
    p_cam = map_to_distribution(target).reshape(len(x), -1)
    cam_pooled = F.normalize((fmap.flatten(2) * p_cam[:, None]).sum(-1), dim=1)

    def measures():
        with torch.no_grad():
            a = enc.attention(fmap).clamp_min(0).reshape(len(x), -1)
            p_a = a / a.sum(1, keepdim=True).clamp_min(1e-12)
            tv = 0.5 * (p_a - p_cam).abs().sum(1).mean().item()
            cos = (F.normalize(attention_pool(fmap, enc.attention(fmap)), dim=1) * cam_pooled).sum(1).mean().item()
        return tv, cos

    tv0, cos0 = measures()
    opt = torch.optim.Adam(enc.head.parameters(), lr=0.02)
    for _ in range(150):
        opt.zero_grad()
        attention_kl_loss(enc.attention(fmap), target).backward()
        opt.step()
    tv1, cos1 = measures()
    assert tv1 < 0.7 * tv0, (tv0, tv1)
    assert cos1 > cos0 and 1 - cos1 < 0.7 * (1 - cos0), (cos0, cos1)
