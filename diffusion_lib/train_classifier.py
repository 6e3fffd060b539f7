"""Training the judge classifier (``python -m diffusion_lib train-classifier``).

Random shifts (and optionally flips) as augmentation, a one-cycle learning rate, and
BatchNorm statistics recomputed exactly over training images at the end, so that the
classifier's features do not depend on the last batches it saw.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .atomic import commit_files
from .checkpoint import check_output_folder, component_files, jsonl_bytes
from .classifier import COMPONENT, ClassifierConfig, FashionClassifier, predict
from .data import load_split
from .device import resolve_device
from .metrics import conditional_accuracy

LOG_NAME = "classifier_log.jsonl"


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
    # one cycle: the learning rate rises to lr over the first 20% of the steps, then anneals to ~0
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.2)

    log: list[dict[str, Any]] = []
    start = time.time()
    for epoch in range(1, epochs + 1):
        batches = range(0, len(train), batch_size)
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc=f"classifier epoch {epoch}/{epochs}", leave=False)
        train_loss, train_accuracy = train_epoch(model, opt, sched, x_train, y_train, batches, batch_size, gen,
                                                 flip, device)
        recalibrate_batchnorm(model, x_train[:bn_images], device=device)
        _, test_logits = predict(model, x_test, device=device)
        log.append({
            "epoch": epoch,
            "train_loss": train_loss,
            "train_accuracy": train_accuracy,
            "test_accuracy": conditional_accuracy(test_logits.argmax(1), y_test),
            "lr": opt.param_groups[0]["lr"],
            "seconds": round(time.time() - start, 1),
        })
        if progress:
            m = log[-1]
            print(f"classifier epoch {epoch}/{epochs}: loss {m['train_loss']:.4f} train acc {m['train_accuracy']:.4f} "
                  f"test acc {m['test_accuracy']:.4f} ({m['seconds']:.0f} s)", flush=True)

    config.test_accuracy = log[-1]["test_accuracy"]
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
        "seconds": log[-1]["seconds"],
        "torch": torch.__version__,
    }
    model.eval()
    commit_files(out_dir, {**component_files(COMPONENT, model, config.to_dict()), LOG_NAME: jsonl_bytes(log)},
                 unlisted=(LOG_NAME,))
    return log[-1]


def train_epoch(model: FashionClassifier, opt: torch.optim.Optimizer, sched, x_train: torch.Tensor,
                y_train: torch.Tensor, batches, batch_size: int, gen: torch.Generator, flip: bool,
                device: torch.device) -> tuple[float, float]:
    """One pass over the training images (N, 1, 32, 32) in a random order, augmented.

    :param batches: the start index of each minibatch (a range, or a progress bar over one)
    :returns: the epoch's mean cross-entropy and accuracy on the (augmented) training images
    """
    model.train()
    order = torch.randperm(len(x_train), generator=gen)
    total_loss, correct, seen = 0.0, 0, 0
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
    return total_loss / max(seen, 1), correct / max(seen, 1)
