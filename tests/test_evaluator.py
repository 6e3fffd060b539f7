"""The Fashion-MNIST classifier and the Evaluator built on its features (diffusion_lib.evaluator)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusion_lib.data import load_split, to_model_space
from diffusion_lib.classifier import ClassifierConfig, FashionClassifier, load_classifier, predict
from diffusion_lib.evaluator import Evaluator
from diffusion_lib.train_classifier import augment, train_classifier

SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints"


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_classifier_shapes(batch):
    torch.manual_seed(0)
    model = FashionClassifier().eval()
    x = torch.rand(batch, 1, 32, 32) * 2 - 1
    assert model(x).shape == (batch, 10)
    assert model.features(x).shape == (batch, model.config.feature_dim)


def test_classifier_other_sizes_and_bad_input():
    model = FashionClassifier(ClassifierConfig(channels=(4, 8), feature_dim=256, image_size=28)).eval()
    assert model.features(torch.zeros(2, 1, 28, 28)).shape == (2, 256)
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\)"):
        model(torch.zeros(2, 1, 32, 32))
    with pytest.raises(AssertionError, match="divisible by 4"):
        FashionClassifier(ClassifierConfig(image_size=30))


def test_config_round_trip():
    config = ClassifierConfig(channels=(8, 16), feature_dim=64, test_accuracy=0.5, training={"epochs": 3})
    assert ClassifierConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown ClassifierConfig keys"):
        ClassifierConfig.from_dict({"widht": 3})


def test_augment_keeps_shape_and_only_shifts_or_flips():
    gen = torch.Generator().manual_seed(0)
    x = to_model_space(load_split("test").images[:16])
    y = augment(x, gen)
    assert y.shape == x.shape
    # a shift by <= 2 pixels inside the 2-pixel background border keeps every garment pixel
    assert torch.allclose(y.sum(dim=(1, 2, 3)), x.sum(dim=(1, 2, 3)))
    assert not torch.equal(y, x), "nothing was shifted"
    # flips alone: every image is itself or its mirror image, and both happen
    z = augment(x, gen, max_shift=0, flip=True)
    same = (z == x).flatten(1).all(1)
    mirrored = (z == x.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all()) and bool((~same & mirrored).any()) and bool((same & ~mirrored).any())


def test_quick_training_writes_files_that_load_back(tmp_path):
    small = ClassifierConfig(channels=(8, 16), feature_dim=32)
    metrics = train_classifier(tmp_path, epochs=1, batch_size=64, limit=512, test_limit=256, progress=False, config=small)
    for name in ("classifier.safetensors", "classifier.json", "classifier_log.jsonl", "SHA256SUMS"):
        assert (tmp_path / name).is_file(), name
    log = [json.loads(line) for line in (tmp_path / "classifier_log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and log[0]["epoch"] == 1
    config = json.loads((tmp_path / "classifier.json").read_text())
    assert config["test_accuracy"] == metrics["test_accuracy"] == log[0]["test_accuracy"]
    assert config["training"]["train_images"] == 512

    # the reloaded model (weights and BatchNorm statistics) reproduces the accuracy measured in training
    model = load_classifier(tmp_path)
    assert model.config.channels == (8, 16) and model.config.feature_dim == 32
    test = load_split("test").subset(256)
    _, logits = predict(model, test.model_space())
    accuracy = (logits.argmax(1) == test.labels).double().mean().item()
    assert accuracy == pytest.approx(config["test_accuracy"], abs=1e-12)
    # already better than chance (10%) after one pass over 512 images
    assert accuracy > 0.3


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory):
    """The shipped classifier if present, else a quick one; reference = 2000 test images (for speed)."""
    if (SHIPPED / "classifier.safetensors").is_file():
        model = load_classifier(SHIPPED)
    else:
        out = tmp_path_factory.mktemp("classifier")
        small = ClassifierConfig(channels=(8, 16), feature_dim=64)
        train_classifier(out, epochs=1, batch_size=64, limit=3000, test_limit=500, progress=False, config=small)
        model = load_classifier(out)
    return Evaluator(model, reference=load_split("test").subset(2000))


def test_evaluator_features_accept_pixels_and_model_space(evaluator):
    pixels = load_split("test").images[:10]
    from_pixels = evaluator.features(pixels)
    assert from_pixels.shape == (10, evaluator.classifier.config.feature_dim)
    assert torch.equal(from_pixels, evaluator.features(to_model_space(pixels)))
    assert torch.equal(from_pixels, evaluator.features(pixels.numpy()))
    with pytest.raises(ValueError, match="model-space"):
        evaluator.features(pixels.float())
    with pytest.raises(ValueError, match="uint8"):
        evaluator.features(to_model_space(pixels) * 127.5 + 127.5)  # pixel-scale floats


def test_evaluator_on_the_reference_itself_is_zero(evaluator):
    ref = load_split("test").subset(2000)
    result = evaluator.evaluate(ref.images, ref.labels, kid_subsets=10)
    assert set(result) == {"fid", "kid", "kid_std", "accuracy", "num_images"}
    assert result["num_images"] == 2000
    assert result["fid"] == pytest.approx(0.0, abs=1e-6)
    # identical sets: subsets drawn from both share images x, whose k(x, x) enters the between-set
    # term but never the within-set terms (i != j), so KID of a set with itself comes out slightly negative
    assert result["kid"] < 0
    assert 0.3 < result["accuracy"] <= 1.0
    # labels that are all wrong: accuracy drops
    wrong = evaluator.evaluate(ref.images, (ref.labels + 1) % 10, kid_subsets=2)["accuracy"]
    assert wrong < result["accuracy"]
    assert evaluator.evaluate(ref.images[:50], kid_subsets=2)["accuracy"] is None


def test_one_class_is_much_worse_than_a_balanced_sample(evaluator):
    train = load_split("train")
    balanced = train.images[:600]
    one_class = train.images[train.labels == 7][:600]  # sneakers only: no diversity across classes
    good = evaluator.evaluate(balanced, kid_subsets=20, kid_subset_size=500)
    bad = evaluator.evaluate(one_class, kid_subsets=20, kid_subset_size=500)
    assert bad["fid"] > 5 * good["fid"]
    assert bad["kid"] > 5 * max(good["kid"], good["kid_std"])


def test_real_floor_and_input_errors(evaluator):
    floor = evaluator.real_floor(n=600, kid_subsets=5, kid_subset_size=500)
    assert floor["num_images"] == 600 and floor["accuracy"] is not None
    assert evaluator.real_floor(n=600, kid_subsets=5, kid_subset_size=500) is floor  # cached
    with pytest.raises(ValueError, match="at least 2 images"):
        evaluator.evaluate(load_split("test").images[:1])
    with pytest.raises(ValueError, match="labels must have shape"):
        evaluator.evaluate(load_split("test").images[:4], labels=np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="class indices"):
        evaluator.evaluate(load_split("test").images[:4], labels=np.array([0, 1, 2, 10]))


@pytest.mark.slow
@pytest.mark.skipif(not (SHIPPED / "classifier.safetensors").is_file(), reason="no shipped classifier in checkpoints/")
def test_shipped_classifier_reaches_93_percent():
    model = load_classifier(SHIPPED)
    test = load_split("test")
    _, logits = predict(model, test.model_space())
    accuracy = (logits.argmax(1) == test.labels).double().mean().item()
    assert accuracy >= 0.93
    assert model.config.test_accuracy == pytest.approx(accuracy, abs=1e-4)


def test_real_floor_is_class_balanced(evaluator, monkeypatch):
    seen = {}
    original = evaluator.evaluate

    def spy(images, labels=None, **kwargs):
        seen["counts"] = torch.bincount(torch.as_tensor(labels), minlength=10).tolist()
        return original(images, labels, **kwargs)

    monkeypatch.setattr(evaluator, "evaluate", spy)
    evaluator.real_floor(n=100, kid_subsets=2, kid_subset_size=50)
    assert seen["counts"] == [10] * 10


@pytest.mark.skipif(not (SHIPPED / "vae.safetensors").is_file(), reason="no shipped autoencoder in checkpoints/")
def test_autoencoder_floor_lies_between_real_data_and_a_broken_autoencoder(evaluator):
    from diffusion_lib.autoencoder import AutoencoderConfig, AutoencoderKL, load_autoencoder

    kwargs = dict(kid_subsets=5, kid_subset_size=500)
    real = evaluator.real_floor(n=600, **kwargs)
    shipped = evaluator.autoencoder_floor(load_autoencoder(SHIPPED), n=600, **kwargs)
    untrained = evaluator.autoencoder_floor(AutoencoderKL(AutoencoderConfig()), n=600, **kwargs)
    assert shipped["num_images"] == 600
    # reconstructions lose a little detail: a bit worse than the real images, far better than noise
    assert real["fid"] < shipped["fid"] < 2 * real["fid"] + 1 < untrained["fid"]
    assert shipped["accuracy"] > 0.9 and untrained["accuracy"] < 0.5
