"""Imaging inference from a verified bundle: decode an uploaded image (PNG/JPEG/DICOM/
NIfTI) with exactly the preprocessing recorded at training, then classify or segment.
No web code here (``deploy/api`` will serve it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medfl.config import ModelConfig
from medfl.data.images import ImagePreprocessing, load_image_bytes
from medfl.errors import BundleError
from medfl.models import IMAGE_MODELS, build_model
from medfl.serving.bundle import Bundle


@dataclass
class ImageModel:
    """The global model of an imaging run, ready to predict from image file bytes."""

    bundle: Bundle
    model: torch.nn.Module
    prep: ImagePreprocessing
    task: str
    labels: list[str]
    threshold: float

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> ImageModel:
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
        return self.bundle.manifest["weights_sha256"][:12]

    def preprocess(self, images: list[bytes]) -> np.ndarray:
        """File bytes -> (n, 1, S, S) float32, as at training (``DataError`` names why an
        image cannot be read: format, frames, channels, corrupt)."""
        return np.stack([load_image_bytes(data, self.prep) for data in images])

    @torch.no_grad()
    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Sigmoid outputs: (n,) for classification, (n, 1, S, S) for segmentation."""
        logits = self.model(torch.as_tensor(x, dtype=torch.float32))
        if logits.ndim == 2:
            logits = logits.squeeze(-1)
        return torch.sigmoid(logits).double().numpy()

    def predict(self, images: list[bytes]) -> list[dict[str, Any]]:
        """Per image, in order. Classification: label and class probabilities.
        Segmentation: the binary mask at the operating threshold (``mask``, (S, S) uint8)
        and the fraction of pixels marked as lesion."""
        p = self.probabilities(self.preprocess(images))
        if self.task == "segmentation":
            masks = (p[:, 0] >= self.threshold).astype(np.uint8)
            return [{"mask": m, "shape": list(m.shape), "lesion_fraction": float(m.mean())}
                    for m in masks]
        return [{"label": self.labels[int(pi >= self.threshold)],
                 "probabilities": {self.labels[0]: float(1 - pi), self.labels[1]: float(pi)}}
                for pi in p]
