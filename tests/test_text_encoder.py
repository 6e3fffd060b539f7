"""Tokenizer and prompt encoder: vocabulary, normalisation, errors, round trips, padding."""

import json
from pathlib import Path

import pytest
import torch

from diffusion_lib.data import FASHION_MNIST_CLASSES
from diffusion_lib.text_encoder import (
    BOS_ID,
    PAD_ID,
    PROMPT_TEMPLATES,
    UNK_ID,
    PromptEncoder,
    PromptEncoderConfig,
    Tokenizer,
)


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer()


def test_vocabulary_holds_specials_template_and_class_words(tokenizer):
    assert tokenizer.vocab[:3] == ("[PAD]", "[UNK]", "[BOS]")
    for word in ("a", "photo", "of", "t-shirt", "trouser", "ankle", "boot", "sneaker"):
        assert word in tokenizer.vocab
    assert len(set(tokenizer.vocab)) == tokenizer.vocab_size


def test_every_templated_class_prompt_round_trips(tokenizer):
    for index, name in enumerate(FASHION_MNIST_CLASSES):
        prompts = [template.format(name) for template in PROMPT_TEMPLATES]
        tokens = tokenizer.encode(prompts)
        assert tokens.shape == (len(PROMPT_TEMPLATES), tokenizer.max_length)
        assert tokens.dtype == torch.long
        assert (tokens[:, 0] == BOS_ID).all()
        assert not (tokens == UNK_ID).any()
        assert tokenizer.decode(tokens) == prompts
        assert [tokenizer.class_index(p) for p in prompts] == [index] * len(prompts)


def test_empty_prompt_is_unconditional(tokenizer):
    tokens = tokenizer.encode([""])
    assert tokens.tolist() == [[BOS_ID] + [PAD_ID] * (tokenizer.max_length - 1)]
    assert tokenizer.class_index("") is None
    assert tokenizer.decode(tokens) == [""]


def test_normalisation_case_punctuation_articles_plurals_hyphens(tokenizer):
    same = ["a photo of an ankle boot", "A Photo of a Ankle-Boot!", "a photo of a ankle boots."]
    tokens = tokenizer.encode(same)
    assert (tokens == tokens[0]).all()
    for prompt in ("t-shirt", "T shirt", "tshirt", "a photo of T-Shirts"):
        assert tokenizer.class_index(prompt) == 0, prompt
    assert tokenizer.class_index("a shirt") == 6  # "shirt" is not "t-shirt"
    assert tokenizer.class_index("trousers") == 1
    assert tokenizer.class_index("dresses") == 3
    assert tokenizer.class_index("a photo of sneakers") == 7


def test_multi_word_class_and_unknown_words(tokenizer):
    assert tokenizer.class_index("ankle boot") == 9
    # unknown words become [UNK], as long as a class is named
    tokens = tokenizer.encode("a red bag")
    assert tokens[0, :4].tolist() == [BOS_ID, tokenizer.word_to_id["a"], UNK_ID, tokenizer.word_to_id["bag"]]
    assert tokenizer.class_index("a red bag") == 8


def test_prompt_without_class_is_an_error_listing_the_classes(tokenizer):
    for prompt in ("a photo of a cat", "boot", "photo"):
        with pytest.raises(ValueError) as err:
            tokenizer.encode([prompt])
        for name in FASHION_MNIST_CLASSES:
            assert name in str(err.value)


def test_too_long_prompt_is_an_error(tokenizer):
    with pytest.raises(ValueError, match="max_length"):
        tokenizer.encode("a very nice and warm photo of a coat")


def test_to_dict_from_dict(tokenizer):
    d = json.loads(json.dumps(tokenizer.to_dict()))
    again = Tokenizer.from_dict(d)
    assert again.vocab == tokenizer.vocab and again.max_length == tokenizer.max_length
    prompts = ["a photo of a bag", "", "sneaker"]
    assert torch.equal(again.encode(prompts), tokenizer.encode(prompts))
    with pytest.raises(ValueError, match="vocabulary"):
        Tokenizer.from_dict(dict(d, vocab=d["vocab"][::-1]))


def test_other_class_names_work():
    digits = Tokenizer(tuple(str(i) for i in range(10)), max_length=6)
    assert digits.class_index("a photo of a 7") == 7
    assert digits.encode(["3"]).shape == (1, 6)


def _encoder(tokenizer, depth=2):
    torch.manual_seed(0)
    config = PromptEncoderConfig(tokenizer.vocab_size, tokenizer.max_length, dim=32, depth=depth)
    return PromptEncoder(config).eval()


def test_prompt_encoder_shape_and_prompt_dependence(tokenizer):
    encoder = _encoder(tokenizer)
    tokens = tokenizer.encode(["a photo of a bag", "a photo of a coat", ""])
    context = encoder(tokens)
    assert context.shape == (3, tokenizer.max_length, 32)
    # the word that differs changes the context vectors of the other words too (self-attention)
    assert not torch.allclose(context[0, :4], context[1, :4])


def test_padding_does_not_change_the_real_words(tokenizer):
    encoder = _encoder(tokenizer)
    tokens = tokenizer.encode(["a bag"])  # [BOS] a bag [PAD] ...
    padded = encoder(tokens)
    unpadded = encoder(tokens[:, :3])
    torch.testing.assert_close(padded[:, :3], unpadded, rtol=1e-5, atol=1e-5)


def test_earlier_key_names_of_the_prompt_encoder_are_read_as_todays():
    """The shipped checkpoints' JSON says layers / heads / mlp_ratio; the config says depth / num_heads / ff_mult,
    as the U-Net's does. Both load to the same config, and a run's overrides are renamed too."""
    from diffusion_lib.checkpoint import load_component
    from diffusion_lib.denoiser import AUTOENCODER_SHA256, DenoiserConfig
    from diffusion_lib.train import TrainConfig, build_denoiser_config

    old = PromptEncoderConfig.from_dict({"vocab_size": 30, "layers": 1, "heads": 2, "mlp_ratio": 3})
    assert old == PromptEncoderConfig(30, depth=1, num_heads=2, ff_mult=3)
    assert set(old.to_dict()) >= {"depth", "num_heads", "ff_mult"} and "heads" not in old.to_dict()
    _, shipped = load_component(Path(__file__).resolve().parents[1] / "checkpoints", "denoiser")
    assert "layers" in shipped["prompt"]  # written before the rename; left as it is (SHA256SUMS)
    prompt = DenoiserConfig.from_dict({k: v for k, v in shipped.items() if k != AUTOENCODER_SHA256}).prompt
    assert (prompt.depth, prompt.num_heads, prompt.ff_mult) == (shipped["prompt"]["layers"],
                                                                 shipped["prompt"]["heads"],
                                                                 shipped["prompt"]["mlp_ratio"])
    config = TrainConfig(out_dir="run", epochs=1, prompt={"layers": 1, "heads": 2})
    assert config.prompt == {"depth": 1, "num_heads": 2}
    assert build_denoiser_config(config).prompt.depth == 1
    with pytest.raises(ValueError, match="unknown PromptEncoderConfig keys"):
        PromptEncoderConfig.from_dict({"vocab_size": 30, "width": 3})
