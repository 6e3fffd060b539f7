"""The kit's judge network: a small Fashion-MNIST classifier whose features FID-FMNIST is measured in.

FID is usually computed on the features of an Inception network trained on
ImageNet. For 28x28 grey clothes that network is a poor fit (and a large
download), so the kit trains its own small CNN on Fashion-MNIST and uses its
penultimate activations as the feature space ("FID-FMNIST"):

    x (B, 1, 32, 32) --[conv-bn-relu x2, maxpool] x2--> (B, C2, 8, 8)
      --flatten, linear-bn-relu--> features f(x) (B, F)  --linear--> logits (B, 10)

Features of a classifier that separates the classes well capture what makes a
coat a coat, so two sets of images with similar feature statistics look alike
to it. Its training is in ``train_classifier.py``; the metrics built on its
features in ``evaluator.py``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .checkpoint import config_from_file, load_component, load_into
from .checks import config_from_dict
from .data import FASHION_MNIST_CLASSES
from .device import resolve_device

COMPONENT = "classifier"


@dataclass
class ClassifierConfig:
    """Architecture of :class:`FashionClassifier` (plus how it was trained, once it was).

    :param image_size: side of the square model-space input (32 = 28 padded by 2)
    :param channels: conv widths of the two stages (each stage halves the resolution)
    :param feature_dim: width F of the penultimate layer, the FID feature space
    :param dropout: dropout before the last linear layer (training only)
    :param test_accuracy: accuracy on the test set, filled in by :func:`train_classifier`
    :param training: how it was trained (epochs, batch size, lr, seed, device, seconds)
    """

    in_channels: int = 1
    image_size: int = 32
    channels: tuple[int, int] = (24, 48)
    feature_dim: int = 128
    num_classes: int = 10
    dropout: float = 0.3
    class_names: tuple[str, ...] = FASHION_MNIST_CLASSES
    test_accuracy: float | None = None
    training: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channels"] = list(self.channels)
        d["class_names"] = list(self.class_names)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ClassifierConfig":
        return config_from_dict(cls, d, convert={"channels": tuple, "class_names": tuple})


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    # no conv bias: the BatchNorm shift that follows would cancel it
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class FashionClassifier(nn.Module):
    """Small VGG-style CNN whose penultimate layer is the evaluator's feature space."""

    def __init__(self, config: ClassifierConfig | None = None):
        super().__init__()
        self.config = config = config or ClassifierConfig()
        assert config.image_size % 4 == 0, (
            f"image_size must be divisible by 4 (two 2x poolings); got {config.image_size}. "
            "Model-space Fashion-MNIST images are 32x32."
        )
        c1, c2 = config.channels
        self.conv = nn.Sequential(
            *_conv_bn_relu(config.in_channels, c1),
            *_conv_bn_relu(c1, c1),
            nn.MaxPool2d(2),  # (B, c1, S/2, S/2)
            *_conv_bn_relu(c1, c2),
            *_conv_bn_relu(c2, c2),
            nn.MaxPool2d(2),  # (B, c2, S/4, S/4)
        )
        side = config.image_size // 4
        self.embed = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c2 * side * side, config.feature_dim, bias=False),
            nn.BatchNorm1d(config.feature_dim),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(config.feature_dim, config.num_classes))

    def _check(self, x: torch.Tensor) -> None:
        s, c = self.config.image_size, self.config.in_channels
        if x.ndim != 4 or x.shape[1] != c or x.shape[-2:] != (s, s):
            raise ValueError(
                f"FashionClassifier expects model-space images (B, {c}, {s}, {s}) in [-1, 1]; got {tuple(x.shape)}. "
                "Convert uint8 (N, 28, 28) pixels with diffusion_lib.data.to_model_space."
            )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations.

        :param x: (B, 1, 32, 32) model-space images in [-1, 1]
        :returns: (B, F) with F = ``config.feature_dim``
        """
        self._check(x)
        return self.embed(self.conv(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """:param x: (B, 1, 32, 32) in [-1, 1]  :returns: logits (B, num_classes)"""
        return self.head(self.features(x))


@torch.no_grad()
def predict(model: FashionClassifier, images: torch.Tensor, batch_size: int = 1000, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Features and logits of model-space ``images`` (N, 1, 32, 32), computed in batches in eval mode.

    :returns: ``(features (N, F) float32, logits (N, num_classes) float32)`` on the CPU
    """
    was_training = model.training
    model.eval()
    feats, logits = [], []
    for i in range(0, images.shape[0], batch_size):
        f = model.features(images[i : i + batch_size].to(device, torch.float32))
        feats.append(f.float().cpu())
        logits.append(model.head(f).float().cpu())
    model.train(was_training)
    if not feats:
        return torch.empty(0, model.config.feature_dim), torch.empty(0, model.config.num_classes)
    return torch.cat(feats), torch.cat(logits)


def load_classifier(directory: Path | str, device: str = "cpu") -> FashionClassifier:
    """Rebuild the classifier from ``directory/classifier.{json,safetensors}`` (checksums verified), in eval mode."""
    tensors, config = load_component(directory, COMPONENT)
    model = FashionClassifier(config_from_file(ClassifierConfig, config, Path(directory) / f"{COMPONENT}.json",
                                               "classifier"))
    load_into(model, tensors, Path(directory) / f"{COMPONENT}.safetensors")
    return model.to(resolve_device(device)).eval()
