"""Sample-quality metrics on classifier features: Frechet distance, KID, accuracy.

A generator is good when its images are distributed like real images. Pixels
are a poor space to compare distributions in, so both sets of images are first
mapped to the penultimate activations of a classifier (``evaluator.py``), and
the two clouds of feature vectors are compared.

**Frechet distance** (FID; "FID-FMNIST" with our Fashion-MNIST classifier in
place of Inception). Fit a Gaussian to each cloud, N(mu1, S1) and N(mu2, S2),
and take the squared 2-Wasserstein distance between the two Gaussians:

    d^2 = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})

It is 0 only for equal means and covariances. The estimate from n samples is
biased upwards (by roughly a constant / n), so compare FIDs only at equal n.

**Kernel inception distance** (KID). The squared maximum mean discrepancy with
the cubic polynomial kernel, on features of dimension d:

    k(x, y) = (x . y / d + 1)^3
    MMD^2 = E k(x, x') + E k(y, y') - 2 E k(x, y),   x, x' ~ P,  y, y' ~ Q

estimated without bias on a sample x_1..x_m, y_1..y_n by leaving out the
i = j terms of the within-set sums:

    MMD^2_u = 1/(m(m-1)) sum_{i != j} k(x_i, x_j)
            + 1/(n(n-1)) sum_{i != j} k(y_i, y_j)
            - 2/(m n)    sum_{i, j}   k(x_i, y_j)

Unbiased means its mean over many samples is the true MMD^2, so it can be
slightly negative when P = Q. KID is averaged over random subsets, and their
standard deviation says how much to trust it. (Comparing a set with *itself*
gives a clearly negative KID: an image drawn into both subsets adds its large
k(x, x) to the between-set sum, while the within-set sums skip i = j.)

**Conditional accuracy**: the share of images that the classifier assigns to
the class they were generated for.

All arithmetic is float64 numpy: feature clouds are small (10k x 128), and
the matrix square root needs the precision.
"""

from __future__ import annotations

import numpy as np


def _as_features(a, name: str) -> np.ndarray:
    """Turn a tensor or array of features into float64 ``(N, D)``, with a clear error."""
    if hasattr(a, "detach"):  # a torch tensor
        a = a.detach().cpu().numpy()
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array of features (N, D); got shape {a.shape}")
    if a.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 feature vectors to estimate a covariance; got {a.shape[0]}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinite values (did the generator diverge?)")
    return a


def _sqrtm_psd(s: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix via its eigendecomposition.

    # S = U diag(lam) U^T   =>   S^{1/2} = U diag(sqrt(lam)) U^T
    Round-off can make tiny eigenvalues negative; they are clipped to 0.
    """
    s = (s + s.T) / 2
    lam, u = np.linalg.eigh(s)
    return (u * np.sqrt(np.clip(lam, 0.0, None))) @ u.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``Tr((S1 S2)^{1/2})`` for symmetric PSD ``S1``, ``S2``.

    ``S1 S2`` is not symmetric, so a general matrix square root (``scipy.linalg.sqrtm``)
    can return complex round-off or fail when the matrices are near singular. Instead:

    # S1 S2 = S1^{1/2} (S1^{1/2} S2 S1^{1/2}) S1^{-1/2}   (a similarity transform)
    so S1 S2 has the same eigenvalues as the symmetric PSD matrix M = S1^{1/2} S2 S1^{1/2}
    (also when S1 is singular, by continuity), and

    # Tr((S1 S2)^{1/2}) = sum_i sqrt(lambda_i(M))
    """
    root1 = _sqrtm_psd(sigma1)
    m = root1 @ sigma2 @ root1
    lam = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(lam, 0.0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Squared Frechet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2).

    :param mu1: (D,) mean of the first Gaussian
    :param sigma1: (D, D) covariance of the first Gaussian (symmetric PSD)
    :param mu2: (D,) mean of the second Gaussian
    :param sigma2: (D, D) covariance of the second Gaussian
    :returns: ``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})``, >= 0
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            f"shapes do not match: mu1 {mu1.shape}, sigma1 {sigma1.shape}, mu2 {mu2.shape}, sigma2 {sigma2.shape}; "
            "expected (D,), (D, D), (D,), (D, D) with the same D"
        )
    diff = mu1 - mu2
    covmean_trace = trace_sqrt_product(sigma1, sigma2)
    # d^2 = |mu1 - mu2|^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^{1/2})
    fd = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * covmean_trace
    # the true value is >= 0; round-off on identical inputs can dip a hair below
    return float(max(fd, 0.0))


def gaussian_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` of features ``(N, D)``."""
    a = _as_features(features, "features")
    return a.mean(axis=0), np.cov(a, rowvar=False, ddof=1)


def fid_from_features(a, b) -> float:
    """Frechet distance between the Gaussians fitted to features ``a`` (N, D) and ``b`` (M, D)."""
    a, b = _as_features(a, "a"), _as_features(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: a has {a.shape[1]}, b has {b.shape[1]}")
    return frechet_distance(*gaussian_statistics(a), *gaussian_statistics(b))


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Cubic polynomial kernel matrix ``(m, n)`` for rows of ``x`` (m, d) and ``y`` (n, d).

    # k(x, y) = (x . y / d + 1)^3
    """
    d = x.shape[1]
    return (x @ y.T / d + 1.0) ** 3


def mmd2_unbiased(x, y) -> float:
    """Unbiased estimate of MMD^2 between the distributions of ``x`` (m, d) and ``y`` (n, d).

    Uses :func:`polynomial_kernel`; ``m`` and ``n`` must be at least 2.
    """
    x, y = _as_features(x, "x"), _as_features(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dimensions differ: x has {x.shape[1]}, y has {y.shape[1]}")
    m, n = x.shape[0], y.shape[0]
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    # sum_{i != j} k(x_i, x_j) = (sum of all entries) - (the diagonal)
    within_x = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    within_y = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    between = k_xy.sum() / (m * n)
    # MMD^2_u = within_x + within_y - 2 between
    return float(within_x + within_y - 2.0 * between)


def kid_from_features(a, b, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Kernel inception distance between features ``a`` (N, D) and ``b`` (M, D).

    Draws ``num_subsets`` pairs of random subsets (each without replacement) of
    ``min(subset_size, N, M)`` rows, computes :func:`mmd2_unbiased` on each pair.

    :returns: ``(mean, std)`` of MMD^2 over the subsets
    """
    a, b = _as_features(a, "a"), _as_features(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: a has {a.shape[1]}, b has {b.shape[1]}")
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be >= 1, got {num_subsets}")
    size = min(subset_size, a.shape[0], b.shape[0])
    if size < 2:
        raise ValueError(f"subset_size must be >= 2, got {subset_size}")
    rng = np.random.default_rng(seed)
    values = np.empty(num_subsets)
    for s in range(num_subsets):
        x = a[rng.choice(a.shape[0], size, replace=False)]
        y = b[rng.choice(b.shape[0], size, replace=False)]
        values[s] = mmd2_unbiased(x, y)
    return float(values.mean()), float(values.std())


def conditional_accuracy(pred_labels, labels) -> float:
    """Share of images whose predicted class equals the class they were generated for.

    :param pred_labels: (N,) predicted class indices (argmax of the classifier's logits)
    :param labels: (N,) the prompted class indices
    """
    pred = np.asarray(pred_labels.detach().cpu() if hasattr(pred_labels, "detach") else pred_labels)
    true = np.asarray(labels.detach().cpu() if hasattr(labels, "detach") else labels)
    if pred.shape != true.shape or pred.ndim != 1:
        raise ValueError(f"pred_labels {pred.shape} and labels {true.shape} must be 1-D arrays of the same length")
    if pred.shape[0] == 0:
        raise ValueError("conditional_accuracy needs at least one image")
    return float((pred == true).mean())
