"""Facts about the Frechet distance, KID and conditional accuracy (diffusion_lib.metrics)."""

import itertools

import numpy as np
import pytest
import scipy.linalg

from diffusion_lib.metrics import (
    conditional_accuracy,
    fid_from_features,
    frechet_distance,
    kid_from_features,
    mmd2_unbiased,
    polynomial_kernel,
)


def random_spd(d, rng):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_distance_diagonal_closed_form():
    # for diagonal covariances S1 = diag(s1), S2 = diag(s2) the matrices commute, so
    # d^2 = |mu1 - mu2|^2 + sum_i (sqrt(s1_i) - sqrt(s2_i))^2
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = rng.uniform(0.1, 3.0, size=6), rng.uniform(0.1, 3.0, size=6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_one_dimensional():
    # N(1, 4) vs N(3, 9): (1 - 3)^2 + (2 - 3)^2 = 5
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(5.0, rel=1e-12)


def test_frechet_distance_scaled_covariance():
    # N(0, S) vs N(0, c^2 S): Tr(S + c^2 S - 2 c S) = (1 - c)^2 Tr(S), for any full S
    rng = np.random.default_rng(1)
    s = random_spd(10, rng)
    c = 1.7
    zero = np.zeros(10)
    assert frechet_distance(zero, s, zero, c**2 * s) == pytest.approx((1 - c) ** 2 * np.trace(s), rel=1e-9)


def test_frechet_distance_matches_general_sqrtm_and_is_symmetric():
    # an independent route: scipy's general matrix square root of S1 S2
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.normal(size=12), rng.normal(size=12)
    s1, s2 = random_spd(12, rng), random_spd(12, rng)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_singular_covariances():
    # rank-deficient covariances (e.g. fewer samples than dimensions, dead ReLU units) must stay finite:
    # diag(1, 0) vs diag(4, 0): (1 - 2)^2 = 1
    assert frechet_distance([0, 0], np.diag([1.0, 0.0]), [0, 0], np.diag([4.0, 0.0])) == pytest.approx(1.0)
    rng = np.random.default_rng(3)
    few = rng.normal(size=(5, 20))  # 5 samples in 20 dimensions: covariance of rank 4
    value = fid_from_features(few, rng.normal(size=(5, 20)))
    assert np.isfinite(value) and value > 0


def test_fid_of_a_sample_with_itself_is_zero():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(500, 16)) @ rng.normal(size=(16, 16))
    assert fid_from_features(a, a) == pytest.approx(0.0, abs=1e-8)


def test_fid_same_gaussian_small_and_shrinks_with_n():
    # FID between two samples of one Gaussian is a positive bias that falls roughly like 1/n
    rng = np.random.default_rng(5)
    d = 8

    def mean_fid(n):
        return np.mean([fid_from_features(rng.normal(size=(n, d)), rng.normal(size=(n, d))) for _ in range(5)])

    small, large = mean_fid(200), mean_fid(4000)
    assert large < 0.05
    assert large < small / 5
    # a real difference (mean shift of 1 in every dimension, so |mu1 - mu2|^2 = d) stands far above it
    shifted = fid_from_features(rng.normal(size=(4000, d)), rng.normal(size=(4000, d)) + 1.0)
    assert shifted == pytest.approx(d, rel=0.05)


def test_mmd2_hand_computed():
    # d = 1, k(x, y) = (x y + 1)^3; x = {0, 1}, y = {1, 2}
    # within x (i != j): k(0, 1) = 1 ; within y: k(1, 2) = 27
    # between: k(0,1) + k(0,2) + k(1,1) + k(1,2) = 1 + 1 + 8 + 27 = 37
    # MMD^2_u = 2*1/2 + 2*27/2 - 2 * 37/4 = 1 + 27 - 18.5 = 9.5
    assert mmd2_unbiased([[0.0], [1.0]], [[1.0], [2.0]]) == pytest.approx(9.5)
    # the kernel divides the dot product by the dimension: (x . y / d + 1)^3
    assert polynomial_kernel(np.array([[1.0, 1.0]]), np.array([[2.0, 0.0]]))[0, 0] == pytest.approx(8.0)


def test_mmd2_estimator_is_exactly_unbiased():
    # P, Q uniform on three points each. Averaging the estimator over every possible i.i.d.
    # sample (all ordered pairs, repeats included) gives its expectation exactly, which must equal
    # the population MMD^2 = mean K(A, A) + mean K(B, B) - 2 mean K(A, B) (all pairs, since
    # x and x' are independent draws that may coincide).
    a = np.array([[0.0, 1.0], [1.0, -1.0], [2.0, 0.5]])
    b = np.array([[0.5, 0.5], [-1.0, 2.0], [1.5, 1.5]])
    population = polynomial_kernel(a, a).mean() + polynomial_kernel(b, b).mean() - 2 * polynomial_kernel(a, b).mean()
    m = 2
    samples_a = [a[list(i)] for i in itertools.product(range(3), repeat=m)]
    samples_b = [b[list(i)] for i in itertools.product(range(3), repeat=m)]
    expectation = np.mean([mmd2_unbiased(x, y) for x in samples_a for y in samples_b])
    assert expectation == pytest.approx(population, rel=1e-12)
    assert population > 0


def test_kid_same_distribution_near_zero_shifted_positive():
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(3000, 16)), rng.normal(size=(3000, 16))
    mean, std = kid_from_features(a, b, num_subsets=50, subset_size=500)
    assert std > 0
    assert abs(mean) < std
    mean_shift, std_shift = kid_from_features(a, b + 0.5, num_subsets=50, subset_size=500)
    assert mean_shift > 10 * std_shift
    assert mean_shift > 100 * abs(mean)


def test_kid_is_deterministic_given_seed_and_clips_subset_size():
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(40, 4)), rng.normal(size=(30, 4))
    assert kid_from_features(a, b, num_subsets=5, seed=3) == kid_from_features(a, b, num_subsets=5, seed=3)
    # subset_size 1000 > 30 rows: subsets of 30 are used, so with b fully used the spread comes from a
    assert np.isfinite(kid_from_features(a, b, num_subsets=5)[0])


def test_conditional_accuracy():
    assert conditional_accuracy(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2])) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="same length"):
        conditional_accuracy(np.array([0, 1]), np.array([0, 1, 2]))


def test_bad_inputs_have_clear_errors():
    with pytest.raises(ValueError, match="dimensions differ"):
        fid_from_features(np.zeros((4, 3)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="at least 2"):
        fid_from_features(np.zeros((1, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="NaN"):
        kid_from_features(np.full((4, 3), np.nan), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="shapes do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
