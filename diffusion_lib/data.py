"""Fashion-MNIST (and MNIST) as tensors the diffusion model can use.

The raw data are the IDX files distributed by Zalando (Fashion-MNIST) and
LeCun et al. (MNIST): ``train-images-idx3-ubyte.gz`` and friends. They are
looked for, in order, in

1. ``$DIFFUSION_DATA`` (a folder holding the four ``*-idx?-ubyte[.gz]`` files,
   or torchvision's ``<root>/FashionMNIST/raw`` layout below it). When it is set it
   is the only place looked in: set but empty, missing or corrupt is an error that
   names it, never a silent fall back to another copy;
2. Debian's package ``dataset-fashion-mnist`` at
   ``/usr/share/datasets/fashion-mnist/``;
3. torchvision's download (``download=True``) into ``~/.cache/diffusion_lib``,
   for users with internet access.

Model space: 28x28 images are zero-padded (in [-1, 1] terms: padded with the
background value -1) to 32x32, so that three halvings of the resolution stay
integral, and scaled from {0..255} to [-1, 1]:

    x = 2 * (pixel / 255) - 1
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

FASHION_MNIST_CLASSES = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
MNIST_CLASSES = tuple(str(d) for d in range(10))

DEBIAN_PATHS = {"fashion-mnist": Path("/usr/share/datasets/fashion-mnist"), "mnist": Path("/usr/share/datasets/mnist")}
TORCHVISION_FOLDERS = {"fashion-mnist": "FashionMNIST", "mnist": "MNIST"}
DATASETS = tuple(DEBIAN_PATHS)
SPLIT_PREFIX = {"train": "train", "test": "t10k"}
IMAGE_SIZE = 32  # model-space size after padding
PAD = 2  # (32 - 28) / 2
TRAIN_IMAGES = 60_000  # the training split's size (Fashion-MNIST and MNIST alike)


class DataNotFoundError(FileNotFoundError):
    """The IDX files could not be found anywhere we look."""


@dataclass
class ImageSet:
    """A split of the dataset held in memory.

    :param images: uint8 tensor ``(N, 28, 28)``, raw pixels in 0..255
    :param labels: int64 tensor ``(N,)``, class indices
    :param class_names: the names of the classes, index = label
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return self.images.shape[0]

    def model_space(self) -> torch.Tensor:
        """Images as the model sees them: float32 ``(N, 1, 32, 32)`` in [-1, 1]."""
        return to_model_space(self.images)

    def subset(self, n: int) -> "ImageSet":
        """The first ``n`` images (deterministic; useful for quick runs)."""
        return ImageSet(self.images[:n], self.labels[:n], self.class_names)


def to_model_space(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(N, 28, 28)`` -> float32 ``(N, 1, 32, 32)`` in [-1, 1]."""
    # x = 2 * p / 255 - 1 maps black (0) to -1 and white (255) to +1
    x = images.float().unsqueeze(1) / 127.5 - 1.0
    # pad with the background value so the border looks like the image's own black
    return F.pad(x, (PAD, PAD, PAD, PAD), value=-1.0)


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    """Model space ``(N, 1, 32, 32)`` -> uint8 ``(N, 28, 28)``, padding cropped.

    Inverse of :func:`to_model_space` up to rounding; values outside [-1, 1]
    are clipped first.
    """
    x = x[:, 0, PAD:-PAD, PAD:-PAD] if x.shape[-1] == IMAGE_SIZE else x[:, 0]
    return ((x.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)


def as_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (N, 28, 28) as they are; model-space floats (N, 1, 32, 32) through :func:`to_pixels`."""
    return images if images.dtype == torch.uint8 else to_pixels(images.float())


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:  # a truncated or damaged .gz, an unreadable file
        raise ValueError(f"{path} cannot be read ({err}): the file is truncated or corrupt; fetch it again") from err
    # header: two zero bytes, a type code (0x08 = uint8), the number of dimensions
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (corrupt or wrong file?)")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(data) - offset != expected:
        raise ValueError(f"{path} is truncated: expected {expected} bytes of data, found {len(data) - offset}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


DATA_VARIABLE = "DIFFUSION_DATA"  # a folder with the IDX files; when set, the only place looked in


def _find_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def _candidate_folders(dataset: str) -> list[Path]:
    """Folders to look in, in priority order (see module docstring)."""
    env = os.environ.get(DATA_VARIABLE)
    if env is not None:
        # set, it is the only place to look: a wrong value is an error, never a silent fallback
        root = Path(env).expanduser()
        return [root, root / dataset, root / TORCHVISION_FOLDERS[dataset] / "raw"]
    folders = [DEBIAN_PATHS[dataset]]
    folders.append(default_download_root() / TORCHVISION_FOLDERS[dataset] / "raw")
    return folders


def default_download_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "diffusion_lib"


def how_to_get_data(dataset: str = "fashion-mnist") -> str:
    """The message shown when no data is found: what is wrong, and every way to fix it."""
    files = ("train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
             "t10k-labels-idx1-ubyte.gz")
    debian = "  * on Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist\n" if dataset == "fashion-mnist" else ""
    download = "  * with internet access: pass download=True to load_split and torchvision fetches it"
    env = os.environ.get(DATA_VARIABLE)
    if env is not None:
        if not env.strip():
            problem = f"{DATA_VARIABLE} is set but empty."
        elif not Path(env).expanduser().exists():
            problem = f"{DATA_VARIABLE}={env} does not exist."
        else:
            problem = (f"{DATA_VARIABLE}={env} holds no {dataset} IDX files (looked in "
                       f"{', '.join(str(p) for p in _candidate_folders(dataset))}).")
        apt = " (on Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist)" if debian else ""
        return (f"{problem} When {DATA_VARIABLE} is set, no other place is looked in.\nFix it in one of these ways:\n"
                f"  * put {files} in the folder {DATA_VARIABLE} names\n"
                f"  * unset {DATA_VARIABLE} to use {DEBIAN_PATHS[dataset]}{apt}\n"
                f"  * with internet access: unset {DATA_VARIABLE} and pass download=True to load_split")
    return (
        f"{dataset} not found. Looked in: {', '.join(str(p) for p in _candidate_folders(dataset))}.\n"
        "Fix it in one of these ways:\n"
        + debian
        + f"  * point {DATA_VARIABLE} at a folder holding {files}\n"
        + download
    )


def _download(dataset: str) -> None:
    """Fetch the IDX files with torchvision (needs internet)."""
    from torchvision import datasets

    cls = datasets.FashionMNIST if dataset == "fashion-mnist" else datasets.MNIST
    for train in (True, False):
        cls(str(default_download_root()), train=train, download=True)


def load_split(split: str = "train", dataset: str = "fashion-mnist", download: bool = False) -> ImageSet:
    """Load one split of Fashion-MNIST or MNIST into memory.

    :param split: ``"train"`` (60,000 images) or ``"test"`` (10,000 images)
    :param dataset: ``"fashion-mnist"`` (default) or ``"mnist"``
    :param download: if nothing is found locally, let torchvision download it
    :raises DataNotFoundError: with instructions, when no copy can be found
    """
    if split not in SPLIT_PREFIX:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLIT_PREFIX)}")
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; valid datasets: {', '.join(DATASETS)}")
    prefix = SPLIT_PREFIX[split]
    stems = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    for attempt in range(2):
        for folder in _candidate_folders(dataset):
            files = [_find_file(folder, s) for s in stems]
            if all(files):
                try:
                    images, labels = (_read_idx(f) for f in files)
                    if images.shape[0] != labels.shape[0]:
                        raise ValueError(f"{files[0]} and {files[1]} disagree on the number of examples")
                except ValueError as err:
                    if os.environ.get(DATA_VARIABLE) is not None:
                        raise ValueError(f"{err} (found through {DATA_VARIABLE}={os.environ[DATA_VARIABLE]})") from err
                    raise
                names = FASHION_MNIST_CLASSES if dataset == "fashion-mnist" else MNIST_CLASSES
                return ImageSet(
                    torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64)), names
                )
        if attempt == 0 and download and os.environ.get(DATA_VARIABLE) is None:
            _download(dataset)
        else:
            break
    raise DataNotFoundError(how_to_get_data(dataset))
