"""The metrics of generated images, measured in the judge classifier's feature space.

:class:`Evaluator` compares a generator's images with the 10,000 test images (see
``metrics.py`` for the formulas, ``classifier.py`` for the network):

* ``fid``: Frechet distance between Gaussians fitted to the two feature clouds;
* ``kid`` / ``kid_std``: unbiased polynomial-kernel MMD^2, mean and std over subsets;
* ``accuracy``: share of images classified as the class they were prompted with.

No generator can beat real data, so :meth:`Evaluator.real_floor` reports the
same numbers for real training images: the floor beside which a model's
numbers should be read. FID depends on the number of images; compare only
numbers computed on equally many. :func:`run_evaluation` samples a pipeline and
measures it; :func:`format_table` prints rows of such measurements.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .autoencoder import reconstruct
from .classifier import FashionClassifier, load_classifier, predict
from .data import ImageSet, load_split, to_model_space
from .device import resolve_device
from .metrics import conditional_accuracy, frechet_distance, gaussian_statistics, kid_from_features

# model space is [-1, 1] and samplers overshoot it a little; floats beyond this are pixels 0..255 passed by mistake
MODEL_SPACE_OVERSHOOT = 2.0


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
        if images.numel() and images.max() > MODEL_SPACE_OVERSHOOT:
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


def run_evaluation(pipe, evaluator, num_images: int, guidance: float, steps: int, sampler: str, seed: int,
                   eta: float = 0.0, spacing: str = "trailing", progress: bool = True, batch_size: int = 500) -> dict:
    """Generate ``num_images`` (evenly over the classes) and measure them; timings included."""
    classes = list(pipe.class_names)
    per_class = -(-num_images // len(classes))
    start = time.perf_counter()
    result = pipe(classes, num_images=per_class, num_inference_steps=steps, guidance_scale=guidance, sampler=sampler,
                  seed=seed, eta=eta, timestep_spacing=spacing, progress=progress, batch_size=batch_size)
    seconds = time.perf_counter() - start
    metrics = evaluator.evaluate(result.images, result.labels)
    metrics.update(sampler=sampler, steps=steps, guidance=guidance, sampling_seconds=round(seconds, 2))
    return metrics


def format_table(rows: list[dict], floor: dict, autoencoder_floor: dict | None = None) -> str:
    """Rows of :func:`run_evaluation` under the real-data floor (and the autoencoder's), one per line."""
    lines = [f"{'sampler':<12} {'steps':>5} {'guid.':>5} {'images':>6} {'FID':>8} {'KID':>9} {'acc.':>6}"]
    floors = [("real data", floor)] + ([("autoencoder", autoencoder_floor)] if autoencoder_floor else [])
    for name, f in floors:
        lines.append(f"{name:<12} {'':>5} {'':>5} {f['num_images']:>6} {f['fid']:>8.3f} {f['kid']:>9.5f} "
                     f"{f['accuracy']:>6.3f}")
    for r in rows:
        lines.append(f"{r['sampler']:<12} {r['steps']:>5} {r['guidance']:>5g} {r['num_images']:>6} {r['fid']:>8.3f} "
                     f"{r['kid']:>9.5f} {r['accuracy']:>6.3f}")
    return "\n".join(lines)
