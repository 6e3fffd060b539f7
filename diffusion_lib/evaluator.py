"""The kit's own judge: a Fashion-MNIST classifier and the metrics built on its features.

FID is usually computed on the features of an Inception network trained on
ImageNet. For 28x28 grey clothes that network is a poor fit (and a large
download), so the kit trains its own small CNN on Fashion-MNIST and uses its
penultimate activations as the feature space ("FID-FMNIST"):

    x (B, 1, 32, 32) --[conv-bn-relu x2, maxpool] x2--> (B, C2, 8, 8)
      --flatten, linear-bn-relu--> features f(x) (B, F)  --linear--> logits (B, 10)

Features of a classifier that separates the classes well capture what makes a
coat a coat, so two sets of images with similar feature statistics look alike
to it. :class:`Evaluator` compares a generator's images with the 10,000 test
images (see ``metrics.py`` for the formulas):

* ``fid``: Frechet distance between Gaussians fitted to the two feature clouds;
* ``kid`` / ``kid_std``: unbiased polynomial-kernel MMD^2, mean and std over subsets;
* ``accuracy``: share of images classified as the class they were prompted with.

No generator can beat real data, so :meth:`Evaluator.real_floor` reports the
same numbers for real training images: the floor beside which a model's
numbers should be read. FID depends on the number of images; compare only
numbers computed on equally many.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .autoencoder import reconstruct
from .checkpoint import check_output_folder, config_from_file, commit_files, component_files, load_component, load_into
from .checks import config_from_dict
from .data import FASHION_MNIST_CLASSES, ImageSet, load_split, to_model_space
from .device import resolve_device
from .metrics import conditional_accuracy, frechet_distance, gaussian_statistics, kid_from_features

COMPONENT = "classifier"
LOG_NAME = "classifier_log.jsonl"


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


# ----------------------------------------------------------------------------------------------
# training


def augment(x: torch.Tensor, generator: torch.Generator, max_shift: int = 2, flip: bool = False) -> torch.Tensor:
    """Random shifts of up to ``max_shift`` pixels, optionally random left-right flips.

    Fashion-MNIST items sit inside a 2-pixel background border in model space,
    so shifts by up to 2 pixels never cut off the garment. Flips are off by
    default: the shoes in Fashion-MNIST nearly all point the same way, so flipped
    shoes are images the test set never shows, and a short training run has no
    capacity to spare for them.

    :param x: (B, C, H, W) model-space images
    """
    b, _, h, w = x.shape
    # pad with the background value -1, then cut an (H, W) window at a random offset per image
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]  # (B, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]  # (B, 1, 1, W)
    batch = torch.arange(b)[:, None, None, None]
    chan = torch.arange(x.shape[1])[None, :, None, None]
    shifted = padded[batch, chan, rows, cols]
    if not flip:
        return shifted
    flipped = torch.rand(b, generator=generator) < 0.5
    return torch.where(flipped[:, None, None, None], shifted.flip(-1), shifted)


@torch.no_grad()
def recalibrate_batchnorm(model: FashionClassifier, images: torch.Tensor, batch_size: int = 500, device="cpu") -> None:
    """Replace BatchNorm's running statistics by exact averages over ``images`` (N, 1, 32, 32).

    During training BatchNorm keeps an exponential moving average of batch
    statistics, which lags behind the changing weights and, after only a few
    steps (quick runs), is still mostly its initial value (mean 0, variance 1).
    Evaluation mode uses those statistics, so they are recomputed for the final
    weights. With ``momentum=None`` PyTorch keeps a plain cumulative average:

    # running_mean = (1/K) sum_k mean(batch_k),  running_var = (1/K) sum_k var(batch_k)
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()  # only BatchNorm and Dropout care, and only BatchNorm's statistics are kept
    for i in range(0, images.shape[0], batch_size):
        model.features(images[i : i + batch_size].to(device, torch.float32))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)


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


def train_classifier(
    out_dir: Path | str,
    epochs: int = 12,
    batch_size: int = 128,
    lr: float = 3e-3,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    limit: int | None = None,
    test_limit: int | None = None,
    config: ClassifierConfig | None = None,
    weight_decay: float = 5e-4,
    bn_images: int = 5000,
    flip: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train :class:`FashionClassifier` on the Fashion-MNIST training set and save it.

    AdamW with a one-cycle learning-rate schedule (warm up to ``lr``, then anneal
    to ~0), cross-entropy, random shifts (:func:`augment`). After each
    epoch BatchNorm statistics are recomputed on ``bn_images`` training images
    (:func:`recalibrate_batchnorm`) and the test accuracy is measured; at the end
    ``classifier.safetensors``, ``classifier.json`` (with ``test_accuracy``) and
    ``classifier_log.jsonl`` (one line per epoch) are written together.

    :param limit: train on the first ``limit`` training images only (quick runs)
    :param test_limit: measure accuracy on the first ``test_limit`` test images only
    :param overwrite: replace a classifier already in ``out_dir`` (refused otherwise)
    :returns: the final metrics: test_accuracy, train_loss, epochs, seconds
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (BatchNorm needs two examples), got {batch_size}")
    device = resolve_device(device)
    out_dir = check_output_folder(out_dir, COMPONENT, "classifier", overwrite)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    train, test = load_split("train"), load_split("test")
    if limit is not None:
        train = train.subset(limit)
    if test_limit is not None:
        test = test.subset(test_limit)
    x_train, y_train = train.model_space(), train.labels
    x_test, y_test = test.model_space(), test.labels

    config = config or ClassifierConfig(class_names=tuple(train.class_names))
    model = FashionClassifier(config).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.2)

    log_lines: list[str] = []
    start = time.time()
    metrics: dict[str, Any] = {}
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(train), generator=gen)
        total_loss, correct, seen = 0.0, 0, 0
        batches = range(0, len(train), batch_size)
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc=f"classifier epoch {epoch}/{epochs}", leave=False)
        for i in batches:
            idx = order[i : i + batch_size]
            if idx.numel() < 2:  # BatchNorm needs at least two examples
                continue
            x = augment(x_train[idx], gen, flip=flip).to(device)
            y = y_train[idx].to(device)
            logits = model(x)
            # L = -(1/B) sum_b log softmax(logits_b)[y_b]
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += loss.item() * y.shape[0]
            correct += (logits.argmax(1) == y).sum().item()
            seen += y.shape[0]
        recalibrate_batchnorm(model, x_train[:bn_images], device=device)
        _, test_logits = predict(model, x_test, device=device)
        test_acc = conditional_accuracy(test_logits.argmax(1), y_test)
        metrics = {
            "epoch": epoch,
            "train_loss": total_loss / max(seen, 1),
            "train_accuracy": correct / max(seen, 1),
            "test_accuracy": test_acc,
            "lr": opt.param_groups[0]["lr"],
            "seconds": round(time.time() - start, 1),
        }
        log_lines.append(json.dumps(metrics))
        if progress:
            print(
                f"classifier epoch {epoch}/{epochs}: loss {metrics['train_loss']:.4f} "
                f"train acc {metrics['train_accuracy']:.4f} test acc {test_acc:.4f} ({metrics['seconds']:.0f} s)",
                flush=True,
            )

    config.test_accuracy = metrics["test_accuracy"]
    config.training = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "flip": flip,
        "bn_images": bn_images,
        "seed": seed,
        "device": str(device),
        "train_images": len(train),
        "test_images": len(test),
        "seconds": metrics["seconds"],
        "torch": torch.__version__,
    }
    model.eval()
    commit_files(out_dir, {**component_files(COMPONENT, model, config.to_dict()),
                           LOG_NAME: ("\n".join(log_lines) + "\n").encode()}, unlisted=(LOG_NAME,))
    return metrics


def load_classifier(directory: Path | str, device: str = "cpu") -> FashionClassifier:
    """Rebuild the classifier from ``directory/classifier.{json,safetensors}`` (checksums verified), in eval mode."""
    tensors, config = load_component(directory, COMPONENT)
    model = FashionClassifier(config_from_file(ClassifierConfig, config, Path(directory) / f"{COMPONENT}.json",
                                               "classifier"))
    load_into(model, tensors, Path(directory) / f"{COMPONENT}.safetensors")
    return model.to(resolve_device(device)).eval()


# ----------------------------------------------------------------------------------------------
# evaluation


def as_model_space(images) -> torch.Tensor:
    """Accept uint8 pixels (N, 28, 28) or model-space floats (N, 1, 32, 32); return the latter.

    Numpy arrays and tensors both work.
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a numpy array or torch tensor, got {type(images).__name__}")
    if images.dtype == torch.uint8:
        if images.ndim == 4 and images.shape[1] == 1:
            images = images[:, 0]
        if images.ndim != 3:
            raise ValueError(f"uint8 images must be pixels (N, 28, 28); got shape {tuple(images.shape)}")
        return to_model_space(images)
    if images.is_floating_point():
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(
                f"float images must be model-space (N, 1, 32, 32) in [-1, 1]; got shape {tuple(images.shape)}. "
                "Pass uint8 pixels (N, 28, 28) instead, or pad with diffusion_lib.data.to_model_space."
            )
        if images.numel() and images.max() > 2.0:
            raise ValueError(
                f"float images reach {images.max().item():.1f}, but model space is [-1, 1]. Pixel values 0..255 "
                "should be passed as uint8 (N, 28, 28); floats in [0, 1] as 2 * x - 1."
            )
        # samplers may overshoot [-1, 1] slightly; saving to pixels would clip the same way
        return images.float().clamp(-1.0, 1.0)
    raise TypeError(
        f"images of dtype {images.dtype} are not understood: pass uint8 pixels (N, 28, 28) "
        "or float model-space images (N, 1, 32, 32) in [-1, 1]"
    )


class Evaluator:
    """FID-FMNIST, KID and conditional accuracy of a set of images against a reference set.

    :param classifier: a trained :class:`FashionClassifier`
    :param device: where to run the classifier (``cpu``, ``cuda``, ``auto``...)
    :param reference: the real images to compare with (default: the 10,000 test images)
    """

    def __init__(self, classifier: FashionClassifier, device: str = "cpu", reference: ImageSet | None = None):
        self.device = resolve_device(device)
        self.classifier = classifier.to(self.device).eval()
        self._reference_set = reference
        self._reference: dict[str, Any] | None = None
        self._floors: dict[tuple, dict[str, Any]] = {}

    @classmethod
    def from_pretrained(cls, directory: Path | str = "checkpoints", device: str = "cpu", reference: ImageSet | None = None) -> "Evaluator":
        """Load ``directory/classifier.*`` (see :func:`load_classifier`)."""
        return cls(load_classifier(directory, device), device=device, reference=reference)

    def features(self, images, batch_size: int = 1000) -> torch.Tensor:
        """Penultimate features (N, F) of uint8 pixels (N, 28, 28) or model-space floats (N, 1, 32, 32)."""
        return predict(self.classifier, as_model_space(images), batch_size, self.device)[0]

    def reference_statistics(self) -> dict[str, Any]:
        """Features, mean and covariance of the reference (test) images, computed once and cached."""
        if self._reference is None:
            ref = self._reference_set if self._reference_set is not None else load_split("test")
            feats, _ = predict(self.classifier, ref.model_space(), device=self.device)
            feats = feats.double().numpy()
            mu, sigma = gaussian_statistics(feats)
            self._reference = {"features": feats, "mu": mu, "sigma": sigma, "num_images": len(ref)}
        return self._reference

    def evaluate(
        self,
        images,
        labels=None,
        batch_size: int = 1000,
        kid_subsets: int = 100,
        kid_subset_size: int = 1000,
        seed: int = 0,
    ) -> dict[str, Any]:
        """Compare ``images`` with the reference set.

        :param images: uint8 (N, 28, 28) pixels or float (N, 1, 32, 32) model-space images, N >= 2
        :param labels: (N,) the class each image was generated for, or None
        :returns: ``dict(fid, kid, kid_std, accuracy (None without labels), num_images)``
        """
        x = as_model_space(images)
        if x.shape[0] < 2:
            raise ValueError(f"evaluate needs at least 2 images to estimate feature statistics; got {x.shape[0]}")
        if labels is not None:
            labels = labels.cpu().long() if isinstance(labels, torch.Tensor) else torch.as_tensor(np.asarray(labels)).long()
            if labels.shape != (x.shape[0],):
                raise ValueError(f"labels must have shape ({x.shape[0]},) to match the images; got {tuple(labels.shape)}")
            classes = self.classifier.config.num_classes
            if labels.numel() and (labels.min() < 0 or labels.max() >= classes):
                raise ValueError(f"labels must be class indices in 0..{classes - 1}; got {labels.min()}..{labels.max()}")
        feats, logits = predict(self.classifier, x, batch_size, self.device)
        feats = feats.double().numpy()
        ref = self.reference_statistics()
        fid = frechet_distance(*gaussian_statistics(feats), ref["mu"], ref["sigma"])
        kid, kid_std = kid_from_features(feats, ref["features"], kid_subsets, kid_subset_size, seed)
        accuracy = None if labels is None else conditional_accuracy(logits.argmax(1), labels)
        return {"fid": fid, "kid": kid, "kid_std": kid_std, "accuracy": accuracy, "num_images": int(x.shape[0])}

    def real_floor(self, n: int = 10000, **kwargs) -> dict[str, Any]:
        """The same numbers for ``n`` real *training* images, balanced over the classes.

        Real images are the best any generator can do, so this is the floor a
        model's FID/KID should be read against (at the same ``n``, since FID is
        biased upwards for small samples). Like the generated sets, the sample is
        balanced: the first ``n / 10`` images of each class (for n < 60,000). Its
        accuracy is optimistic: the classifier was trained on these images (its
        accuracy on unseen real images is ``classifier.config.test_accuracy``).
        """
        key = (n, tuple(sorted(kwargs.items())))
        if key not in self._floors:
            train = balanced_training_images(n)
            self._floors[key] = self.evaluate(train.images, train.labels, **kwargs)
        return self._floors[key]

    def autoencoder_floor(self, vae: nn.Module, n: int = 10000, **kwargs) -> dict[str, Any]:
        """The same numbers for the autoencoder's reconstructions of the images of :meth:`real_floor`.

        Latent diffusion generates latents and decodes them, so even a perfect latent model
        only produces what the decoder can: this is the floor such a model cannot beat.
        """
        train = balanced_training_images(n)
        return self.evaluate(reconstruct(vae, train.images), train.labels, **kwargs)


def balanced_training_images(n: int) -> ImageSet:
    """The first ``n / 10`` training images of each class (all 60,000 for n >= 60,000)."""
    train = load_split("train")
    if n >= len(train):
        return train
    classes = int(train.labels.max()) + 1
    per_class = -(-n // classes)
    picks = torch.cat([torch.nonzero(train.labels == c).flatten()[:per_class] for c in range(classes)])
    return ImageSet(train.images[picks], train.labels[picks], train.class_names)
