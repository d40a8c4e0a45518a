"""Imaging inference from a verified bundle: decode an uploaded image (PNG/JPEG/DICOM/
NIfTI) with exactly the preprocessing recorded at training, then classify or segment.
No web code here (``deploy/api`` will serve it)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from medfl.config import ModelConfig
from medfl.data.images import ImagePreprocessing, load_image_bytes
from medfl.errors import BundleError, DataError
from medfl.models import IMAGE_MODELS, build_model
from medfl.serving.bundle import Bundle
from medfl.serving.tabular import InputError
from medfl.tasks import EvalKind, evaluation_of


def mask_rle(mask: np.ndarray) -> list[int]:
    """Run lengths of a binary mask read row by row, starting with a run of 0s (which may
    be empty): ``[0, 0, 1, 1, 1, 0]`` -> ``[2, 3, 1]``."""
    flat = np.asarray(mask, dtype=np.uint8).reshape(-1)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat.size and flat[0] == 1 else runs


def mask_from_rle(runs: list[int], shape: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`mask_rle`."""
    values = np.arange(len(runs)) % 2
    return np.repeat(values, runs).astype(np.uint8).reshape(shape)


@dataclass
class ImageModel:
    """The global model of an imaging run, ready to predict from image file bytes."""

    bundle: Bundle
    model: torch.nn.Module
    prep: ImagePreprocessing
    task: str
    labels: list[str]
    threshold: float
    #: one forward pass at a time: Grad-CAM hooks the shared module, and a concurrent
    #: request's forward pass would land in another request's activations
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def segmentation(self) -> bool:
        """Whether the model predicts a mask per image (else one label)."""
        return evaluation_of(self.task) is EvalKind.SEGMENTATION

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> ImageModel:
        """Build the network the manifest names, load its weights (strict) in eval mode.

        Raises ``BundleError`` when the bundle holds no imaging model or the weights do
        not fit the architecture.
        """
        m = bundle.manifest
        arch = m["architecture"]
        if arch.get("name") not in IMAGE_MODELS or "image" not in m["preprocessing"]:
            raise BundleError("the bundle has no imaging model or image preprocessing "
                              "(is it a tabular model?)")
        model = build_model(ModelConfig(arch["name"], 0, int(arch["width"])),
                            image_shape=tuple(arch["image_shape"]),
                            n_outputs=int(arch["n_outputs"]))
        try:
            model.load_state_dict(bundle.weights, strict=True)
        except RuntimeError:
            raise BundleError(f"weights do not fit architecture {arch['name']!r}") from None
        model.eval()
        return cls(bundle, model, ImagePreprocessing.from_dict(m["preprocessing"]["image"]),
                   str(m["task"]), list(m["label_names"]), float(m.get("threshold", 0.5)))

    @property
    def version(self) -> str:
        """The model version: the first 12 hex digits of the weights' sha256."""
        return self.bundle.manifest["weights_sha256"][:12]

    def preprocess(self, images: list[bytes]) -> np.ndarray:
        """File bytes -> (n, 1, S, S) float32, as at training.

        Raises ``InputError`` naming the upload (``files[i]``) and why it cannot be read
        (format, frames, channels, corrupt), never a pixel or tag value.
        """
        out = []
        for i, data in enumerate(images):
            try:
                out.append(load_image_bytes(data, self.prep))
            except DataError as exc:
                raise InputError(f"files[{i}]", str(exc)) from None
        return np.stack(out)

    @torch.no_grad()
    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Sigmoid outputs: (n,) for classification, (n, 1, S, S) for segmentation."""
        with self.lock:
            logits = self.model(torch.as_tensor(x, dtype=torch.float32))
        if logits.ndim == 2:
            logits = logits.squeeze(-1)
        return torch.sigmoid(logits).double().numpy()

    def predict(self, images: list[bytes]) -> list[dict[str, Any]]:
        """Per image, in order. Classification: label and class probabilities.
        Segmentation: the binary mask at the operating threshold (``mask``, (S, S) uint8)
        and the fraction of pixels marked as lesion."""
        p = self.probabilities(self.preprocess(images))
        if self.segmentation:
            masks = (p[:, 0] >= self.threshold).astype(np.uint8)
            return [{"mask": m, "shape": list(m.shape), "lesion_fraction": float(m.mean()),
                     "mask_rle": mask_rle(m)} for m in masks]
        return [{"label": self.labels[int(pi >= self.threshold)],
                 "probabilities": {self.labels[0]: float(1 - pi), self.labels[1]: float(pi)}}
                for pi in p]

    def explain(self, images: list[bytes]) -> list[dict[str, Any]]:
        """Grad-CAM of the positive logit per image (classification only): the heatmap
        (S, S) in [0, 1], the same as a greyscale PNG, and its overlay on the preprocessed
        image (PNG)."""
        if self.segmentation:
            raise InputError("files", "a segmentation model is explained by its mask: use "
                                      "/predict (Grad-CAM needs a single class score)")
        from medfl.explain import feature_layer, gradcam, overlay_png

        x = self.preprocess(images)
        with self.lock:
            maps = gradcam(self.model, x, target_layer=feature_layer(self.model))
        return [{"heatmap": m, "shape": list(m.shape), "heatmap_png": _grey_png(m),
                 "overlay_png": overlay_png(xi[0], m)} for xi, m in zip(x, maps, strict=True)]


def _grey_png(values: np.ndarray) -> bytes:
    """(H, W) in [0, 1] -> an 8-bit greyscale PNG."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.clip(values, 0, 1) * 255).round().astype(np.uint8), mode="L").save(
        buf, format="PNG")
    return buf.getvalue()
