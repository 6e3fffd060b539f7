"""From a prompt to context tokens: the miniature counterpart of Stable Diffusion's CLIP text encoder.

Stable Diffusion turns a prompt into ``L = 77`` vectors with CLIP's text
transformer; the U-Net reads them through cross-attention. Here the prompts
only ever name one of ten clothes, so a tiny version does the same job:

1. **Tokenizer** (word level). The prompt is lower-cased and stripped of
   punctuation, split into words, and each word becomes an integer id from a
   small vocabulary: the special tokens, the words of the prompt templates
   (``"a photo of a {}"``) and the words of the class names. The sequence
   starts with ``[BOS]`` and is padded with ``[PAD]`` to a fixed length ``L``:

       "a photo of an ankle boot"  ->  [BOS] a photo of a ankle boot [PAD]

   The empty prompt ``""`` is the *unconditional* prompt (``[BOS]`` and
   padding only) that classifier-free guidance needs. A prompt that names no
   class is an error, because the model could not know what to draw.

2. **PromptEncoder**. Token embedding plus a learned position embedding,

       h_0[l] = E[token_l] + P[l]                      (B, L, D)

   then a few pre-norm transformer layers (self-attention over the words,
   then an MLP) and a final LayerNorm. Each output vector describes one word
   *in the context of the whole prompt*: the vector at "boot" knows it
   follows "ankle". The U-Net's cross-attention reads these ``(B, L, D)``
   vectors; unlike CLIP, the encoder is trained together with the U-Net.

Padding positions are masked out as keys of the self-attention, so they never
change the meaning of the real words (the ``[BOS]`` token keeps at least one
position visible, even for ``""``).
"""

from __future__ import annotations

import re
from typing import Any
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .attention import Attention
from .checks import config_from_dict
from .data import FASHION_MNIST_CLASSES

PROMPT_TEMPLATES = ("a photo of a {}", "a {}", "{}")
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[BOS]")
PAD_ID, UNK_ID, BOS_ID = 0, 1, 2
# words that mean the same as a vocabulary word; "an" reads better before vowels
ALIASES = {"an": "a"}


class Tokenizer:
    """Word-level tokenizer for prompts about the classes of a dataset.

    :param class_names: the class names; their words join the vocabulary
    :param max_length: L, the length of every encoded prompt including ``[BOS]``
    """

    def __init__(self, class_names: tuple[str, ...] | list[str] = FASHION_MNIST_CLASSES, max_length: int = 8):
        self.class_names = tuple(class_names)
        self.max_length = int(max_length)
        # each class as a tuple of words, e.g. "ankle boot" -> ("ankle", "boot")
        self.class_words = tuple(tuple(_split_words(name)) for name in self.class_names)
        template_words = [w for template in PROMPT_TEMPLATES for w in _split_words(template.format(""))]
        words = list(SPECIAL_TOKENS)
        for word in template_words + [w for phrase in self.class_words for w in phrase]:
            if word not in words:
                words.append(word)
        self.vocab: tuple[str, ...] = tuple(words)
        self.word_to_id = {w: i for i, w in enumerate(self.vocab)}
        class_vocab = {w for phrase in self.class_words for w in phrase}
        self._class_spellings = {w: w for w in class_vocab} | {w.replace("-", ""): w for w in class_vocab}
        longest = max(len(_split_words(t.format(n))) for t in PROMPT_TEMPLATES for n in self.class_names)
        if self.max_length < longest + 1:
            raise ValueError(
                f"max_length={max_length} is too short: the longest templated prompt has {longest} words "
                f"plus [BOS]; use max_length >= {longest + 1}"
            )

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def words(self, prompt: str) -> list[str]:
        """Normalise a prompt into vocabulary words (unknown words are kept as they are).

        Lower case, punctuation removed, ``"an"`` -> ``"a"``, plurals of class
        words -> singular (``"trousers"`` -> ``"trouser"``), and hyphenated
        class words accepted with or without the hyphen (``"t shirt"``,
        ``"tshirt"`` -> ``"t-shirt"``).
        """
        words: list[str] = []
        for word in _split_words(prompt):
            # "ankle-boot" -> "ankle", "boot"; but "t-shirt" is one word of the vocabulary
            parts = word.split("-") if self._canonical(word) not in self.word_to_id else [word]
            for part in filter(None, parts):
                # "t shirt" -> "t-shirt": join word pairs that spell a hyphenated class word
                pair = self._canonical(f"{words[-1]}-{part}") if words else ""
                if pair in self.word_to_id:
                    words[-1] = pair
                else:
                    words.append(self._canonical(part))
        return words

    def _canonical(self, word: str) -> str:
        """The vocabulary spelling of ``word``, or ``word`` itself if there is none."""
        word = ALIASES.get(word, word)
        if word in self.word_to_id:
            return word
        # plural -> singular, "tshirt" -> "t-shirt" (class words only)
        for stem in (word, word[:-1] if word.endswith("s") else "", word[:-2] if word.endswith("es") else ""):
            if stem in self._class_spellings:
                return self._class_spellings[stem]
        return word

    def class_index(self, prompt: str) -> int | None:
        """Index of the class the prompt names (the first one, reading left to right).

        :returns: ``None`` for the unconditional prompt ``""`` (or any prompt without words)
        :raises ValueError: a non-empty prompt names no class
        """
        words = self.words(prompt)
        if not words:
            return None
        # longest phrase first, so that a class "ankle boot" beats a class "boot" at the same word
        by_length = sorted(enumerate(self.class_words), key=lambda item: -len(item[1]))
        for start in range(len(words)):
            for index, phrase in by_length:
                if tuple(words[start : start + len(phrase)]) == phrase:
                    return index
        raise ValueError(
            f"The prompt {prompt!r} names no class the model knows. Name one of: "
            f"{', '.join(self.class_names)} (e.g. {PROMPT_TEMPLATES[0].format(self.class_names[0])!r}), "
            'or use "" for an unconditional sample.'
        )

    def encode(self, prompts: list[str] | str) -> torch.Tensor:
        """Prompts -> token ids.

        :param prompts: B prompts (a single string counts as one prompt)
        :returns: LongTensor (B, max_length): ``[BOS]``, the words, ``[PAD]``...
        :raises ValueError: a prompt names no class, or has too many words
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        rows = []
        for prompt in prompts:
            self.class_index(prompt)  # raises for a prompt that names no class
            words = self.words(prompt)
            if len(words) + 1 > self.max_length:
                raise ValueError(
                    f"The prompt {prompt!r} has {len(words)} words, but this tokenizer holds at most "
                    f"{self.max_length - 1} (max_length={self.max_length} includes [BOS]). Shorten the prompt, "
                    f"e.g. {PROMPT_TEMPLATES[0].format(self.class_names[0])!r}."
                )
            ids = [BOS_ID] + [self.word_to_id.get(w, UNK_ID) for w in words]
            rows.append(ids + [PAD_ID] * (self.max_length - len(ids)))
        return torch.tensor(rows, dtype=torch.long).reshape(len(rows), self.max_length)

    def decode(self, tokens: torch.Tensor) -> list[str]:
        """Token ids (B, L) -> the normalised prompts (without ``[BOS]`` and padding)."""
        return [
            " ".join(self.vocab[i] for i in row if i not in (PAD_ID, BOS_ID)) for row in tokens.tolist()
        ]

    def token_strings(self, tokens: torch.Tensor) -> list[list[str]]:
        """Token ids (B, L) -> all L token names per row, e.g. to label attention maps."""
        return [[self.vocab[i] for i in row] for row in tokens.tolist()]

    def to_dict(self) -> dict:
        return {"class_names": list(self.class_names), "max_length": self.max_length, "vocab": list(self.vocab)}

    @classmethod
    def from_dict(cls, d: dict) -> "Tokenizer":
        tokenizer = cls(tuple(d["class_names"]), d["max_length"])
        if "vocab" in d and list(d["vocab"]) != list(tokenizer.vocab):
            raise ValueError(
                f"The stored vocabulary {d['vocab']} differs from the one this code builds "
                f"{list(tokenizer.vocab)}: the checkpoint was made by a different version of the tokenizer."
            )
        return tokenizer


def prompt_table(tokenizer: "Tokenizer", class_names: tuple[str, ...]) -> torch.Tensor:
    """Every training prompt tokenised once: (C * K + 1, L) token ids, on the CPU.

    Row ``class * K + template`` is ``PROMPT_TEMPLATES[template]`` filled with the class
    name (K templates); the last row is the empty prompt of classifier-free guidance.
    """
    prompts = [template.format(name) for name in class_names for template in PROMPT_TEMPLATES]
    return tokenizer.encode(prompts + [""])


def _split_words(text: str) -> list[str]:
    """Lower case, punctuation -> space (hyphens inside words survive), split on white space."""
    text = re.sub(r"[^\w\s-]", " ", text.lower())
    return [w.strip("-") for w in text.split() if w.strip("-")]


@dataclass
class PromptEncoderConfig:
    """Size of the prompt encoder.

    :param vocab_size: number of token ids (``Tokenizer.vocab_size``)
    :param max_length: L, tokens per prompt (``Tokenizer.max_length``)
    :param dim: D, width of the context vectors (= the U-Net's ``context_dim``)
    :param depth: transformer layers (the U-Net calls the same thing ``transformer_depth``)
    :param num_heads: attention heads (``dim`` must be divisible by ``num_heads``)
    :param ff_mult: hidden width of each MLP = ``ff_mult * dim``

    The field names are the U-Net's (:class:`~diffusion_lib.unet.UNetConfig`); configs written with
    the earlier names (``layers``, ``heads``, ``mlp_ratio``: the shipped checkpoints' JSON) are read
    as these (:data:`RENAMED_PROMPT_KEYS`).
    """

    vocab_size: int
    max_length: int = 8
    dim: int = 64
    depth: int = 2
    num_heads: int = 4
    ff_mult: int = 2
    dropout: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PromptEncoderConfig":
        return config_from_dict(cls, current_prompt_keys(d))


# the prompt encoder's settings under their earlier names -> today's (the names the U-Net's config uses)
RENAMED_PROMPT_KEYS = {"layers": "depth", "heads": "num_heads", "mlp_ratio": "ff_mult"}


def current_prompt_keys(settings: Any) -> Any:
    """``settings`` (prompt encoder settings, a dict) with earlier key names replaced by today's."""
    if not isinstance(settings, dict):
        return settings  # config_from_dict says what is wrong with it
    return {RENAMED_PROMPT_KEYS.get(key, key): value for key, value in settings.items()}


class TransformerLayer(nn.Module):
    """Pre-norm transformer layer: ``x + SelfAttention(LN(x))``, then ``x + MLP(LN(x))``.

    The U-Net's :class:`~diffusion_lib.attention.BasicTransformerBlock` without the cross-attention
    (a prompt attends only to itself) and with a GELU MLP instead of GEGLU, as in CLIP's text encoder.
    """

    def __init__(self, dim: int, num_heads: int, ff_mult: int, dropout: float = 0.0):
        super().__init__()
        assert dim % num_heads == 0, f"dim={dim} cannot be split into {num_heads} attention heads"
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, None, num_heads, dim // num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, ff_mult * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff_mult * dim, dim)
        )

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """
        :param x: (B, L, dim)
        :param key_mask: bool (B, L), ``False`` at padding
        :returns: (B, L, dim)
        """
        x = x + self.attn(self.norm1(x), key_mask=key_mask)
        x = x + self.mlp(self.norm2(x))
        return x


class PromptEncoder(nn.Module):
    """Token ids (B, L) -> context vectors (B, L, D) for the U-Net's cross-attention."""

    def __init__(self, config: PromptEncoderConfig):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.dim)
        self.position_embedding = nn.Parameter(torch.zeros(config.max_length, config.dim))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding, std=0.01)
        self.layers = nn.ModuleList(
            TransformerLayer(config.dim, config.num_heads, config.ff_mult, config.dropout) for _ in range(config.depth)
        )
        self.final_norm = nn.LayerNorm(config.dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """
        :param tokens: LongTensor (B, L) from :meth:`Tokenizer.encode`, L <= max_length
        :returns: context (B, L, D)
        """
        length = tokens.shape[1]
        assert length <= self.config.max_length, (
            f"{length} tokens per prompt, but the encoder has positions for {self.config.max_length}"
        )
        # h_0[l] = E[token_l] + P[l]
        h = self.token_embedding(tokens) + self.position_embedding[:length]
        # padding is no word: no position may attend to it
        key_mask = tokens != PAD_ID
        for layer in self.layers:
            h = layer(h, key_mask)
        return self.final_norm(h)
