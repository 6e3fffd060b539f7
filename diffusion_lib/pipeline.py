r"""Text -> image, end to end: the whole latent diffusion model in one call.

    prompt --tokenizer--> tokens --prompt encoder--> context c
    z_T ~ N(0, I) (B, 4, 8, 8) --sampler(U-Net(z_t, t, c), guidance w)--> z_0
    x_0 = decoder(z_0 / scale_factor) (B, 1, 32, 32) --crop--> 28x28 uint8 pixels

The latents the U-Net sees were multiplied by the autoencoder's measured
``scale_factor`` (1 / std of the training latents) so that they have unit
variance, the variance the noise schedule assumes for x_0; decoding divides it
out again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from . import checks
from .autoencoder import AutoencoderKL, load_autoencoder
from .data import IMAGE_SIZE, to_model_space, to_pixels
from .denoiser import Denoiser, load_denoiser
from .device import resolve_device
from .editing import latent_mask
from .guidance import classifier_free_guidance
from .samplers import SAMPLERS, Trajectory, inference_timesteps, resolve_sampler_name, sample
from .schedules import NoiseSchedule


@dataclass
class PipelineOutput:
    """What :class:`Pipeline` returns.

    :param images: uint8 (N, 28, 28), the padding cropped
    :param labels: int64 (N,), the prompted class index (-1 for the unconditional prompt "")
    :param prompts: the N prompts, one per image
    :param model_space: float32 (N, 1, 32, 32) decoded images in [-1, 1] (before clipping)
    :param latents: float32 (N, 4, h, w) final scaled latents z_0
    :param trajectory: the sampler's :class:`~diffusion_lib.samplers.Trajectory` (latents), if asked for
    """

    images: torch.Tensor
    labels: torch.Tensor
    prompts: list[str]
    model_space: torch.Tensor
    latents: torch.Tensor
    trajectory: Trajectory | None = None


class Pipeline:
    """The autoencoder, the denoiser and its noise schedule, ready to sample.

    >>> pipe = Pipeline.from_pretrained("checkpoints")
    >>> out = pipe("a photo of a sneaker", num_images=4, guidance_scale=3.0, seed=0)
    >>> out.images.shape
    torch.Size([4, 28, 28])
    """

    def __init__(self, vae: AutoencoderKL, denoiser: Denoiser, device: str | torch.device = "cpu"):
        self.device = resolve_device(str(device)) if not isinstance(device, torch.device) else device
        self.vae = vae.to(self.device).eval()
        self.denoiser = denoiser.to(self.device).eval()
        self.schedule = NoiseSchedule.from_dict(denoiser.config.schedule)

    @classmethod
    def from_pretrained(
        cls, directory: str | Path = "checkpoints", device: str = "auto", denoiser_name: str = "denoiser"
    ) -> "Pipeline":
        """Load ``vae`` and ``denoiser`` (or a ladder snapshot such as ``denoiser_epoch010``) from a directory.

        Both files are checked against the directory's ``SHA256SUMS``.
        """
        device = resolve_device(device)
        return cls(load_autoencoder(directory, device), load_denoiser(directory, device, denoiser_name), device)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.denoiser.tokenizer.class_names)

    def latent_shape(self, n: int) -> tuple[int, int, int, int]:
        """(n, 4, 8, 8) for 32x32 images: the autoencoder's downsampling factor decides."""
        cfg = self.vae.config
        side = IMAGE_SIZE // cfg.downsample_factor
        return (n, cfg.latent_channels, side, side)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images, uint8 (B, 28, 28) or model space (B, 1, 32, 32) -> scaled latents z (B, 4, h, w)."""
        x = _images_as_model_space(images, "images").to(self.device)
        return self.vae.encode_latents(x)  # z = scale_factor * mu(x), as in training

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents z (B, 4, h, w) -> model-space images (B, 1, 4h, 4w)."""
        return self.vae.decode_latents(latents.to(self.device))  # x = D(z / scale_factor)

    def check_request(self, prompt, num_images=1, num_inference_steps=20, sampler="dpmsolver++",
                      guidance_scale=3.0, eta=0.0, timestep_spacing="trailing") -> list[str]:
        """Check the arguments of :meth:`__call__` before any work; returns the prompts as a list.

        :raises TypeError: an argument of the wrong type (naming it and the type expected)
        :raises ValueError: a value out of range, an unknown name or prompt (naming the valid ones)
        """
        if isinstance(prompt, str):
            prompts = [prompt]
        elif isinstance(prompt, (list, tuple)) and all(isinstance(p, str) for p in prompt):
            prompts = list(prompt)
        else:
            raise TypeError(f"prompt must be a string or a list of strings, got {prompt!r:.60} "
                            f"({type(prompt).__name__})")
        if not prompts:
            raise ValueError("no prompt given: pass a prompt such as 'a photo of a sneaker' (or '' for unconditional)")
        checks.integer("num_images", num_images, 1)
        checks.guidance_scale("guidance_scale", guidance_scale)
        checks.eta("eta", eta)
        if not isinstance(sampler, str):
            raise TypeError(f"sampler must be a string, one of {', '.join(SAMPLERS)}; got {sampler!r}")
        sampler = resolve_sampler_name(sampler)
        if eta != 0 and sampler != "ddim":
            raise ValueError(f"eta={eta} only applies to the ddim sampler, not {sampler!r}")
        # raises for N < 1, N > T or an unknown spacing, naming the valid values
        inference_timesteps(self.schedule.num_train_timesteps, num_inference_steps, timestep_spacing)
        # every prompt before any work (an unknown prompt lists the class names)
        self.denoiser.tokenizer.encode(prompts)
        return prompts

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        num_images: int = 1,
        num_inference_steps: int = 20,
        guidance_scale: float = 3.0,
        sampler: str = "dpmsolver++",
        seed: int | None = None,
        generator: torch.Generator | None = None,
        eta: float = 0.0,
        timestep_spacing: str = "trailing",
        return_trajectory: bool = False,
        progress: bool = True,
        batch_size: int = 500,
        negative_prompt: str | list[str] | None = None,
        image: torch.Tensor | None = None,
        strength: float = 1.0,
        mask: torch.Tensor | None = None,
    ) -> PipelineOutput:
        """Generate ``num_images`` images per prompt.

        :param prompt: one prompt or a list; ``""`` is unconditional
        :param num_images: images per prompt (so ``len(prompts) * num_images`` in all)
        :param guidance_scale: w of classifier-free guidance; 0 = unconditional, 1 = conditional
        :param sampler: ``ddpm``, ``ddim`` or ``dpmsolver++``
        :param seed: seed of a CPU generator (same images on CPU and GPU); or pass ``generator``
        :param batch_size: images per sampler call (bounds memory; results do not depend on it
            except through the order in which noise is drawn)
        :param negative_prompt: what guidance steers away from, in place of the empty prompt: one prompt for
            all, or one per prompt (guided output eps(neg) + w (eps(prompt) - eps(neg)))
        :param image: img2img / inpainting: the image(s) to start from, uint8 (M, 28, 28) or model space
            (M, 1, 32, 32), M = 1 or one per generated image
        :param strength: SDEdit's s in (0, 1]: how much of the sampling path to redo (needs ``image``)
        :param mask: inpainting: (M or 1, 28, 28) or (M or 1, 1, 32, 32), 1 = redraw, 0 = keep (needs ``image``)
        """
        prompts = self.check_request(prompt, num_images, num_inference_steps, sampler, guidance_scale, eta,
                                     timestep_spacing)
        negatives = self._negative_prompts(negative_prompt, prompts)
        total = len(prompts) * num_images
        z_init, latent_masks = self._edit_inputs(image, strength, mask, total)
        batch_size = checks.integer("batch_size", batch_size, 1)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        # a prompt without words ("", "!!!") is the unconditional prompt: label -1
        labels = [-1 if (index := self.denoiser.tokenizer.class_index(p)) is None else index for p in prompts]
        all_prompts = [p for p in prompts for _ in range(num_images)]
        all_negatives = [n for n in negatives for _ in range(num_images)]
        all_labels = torch.tensor([lab for lab in labels for _ in range(num_images)], dtype=torch.long)
        if generator is None:
            seed = checks.seed("seed", seed) if seed is not None else torch.seed() % 2**63
            generator = torch.Generator().manual_seed(seed)

        latents, trajectories = [], []
        for start in range(0, total, batch_size):
            stop = min(start + batch_size, total)
            model_fn = self._guided_model(all_prompts[start:stop], all_negatives[start:stop], guidance_scale)
            edit = {}
            if z_init is not None:
                edit = {"x_init": z_init[start:stop], "strength": strength,
                        "mask": None if latent_masks is None else latent_masks[start:stop]}
            result = sample(model_fn, self.latent_shape(stop - start), self.schedule, sampler=sampler,
                            num_inference_steps=num_inference_steps, prediction_type=self.denoiser.prediction_type,
                            eta=eta, timestep_spacing=timestep_spacing, generator=generator,
                            return_trajectory=return_trajectory, progress=progress, device=self.device, **edit)
            if return_trajectory:
                result, trajectory = result
                trajectories.append(trajectory)
            latents.append(result)
        z0 = torch.cat(latents)
        x = torch.cat([self.decode(z) for z in z0.split(batch_size)]).float().cpu()
        trajectory = join_trajectories(trajectories) if return_trajectory else None
        return PipelineOutput(to_pixels(x), all_labels, all_prompts, x, z0.cpu(), trajectory)

    def _guided_model(self, prompts: list[str], negatives: list[str], guidance_scale: float):
        """The guided noise prediction for one batch: ``model_fn(z_t, t)``, one prompt (and one negative
        prompt, "" = unconditional) per image."""
        # the prompt encoder runs once per distinct prompt at each step (here at most 11 with
        # the empty one, whatever the batch), and every image looks its prompt's context up
        distinct = list(dict.fromkeys(prompts + negatives))
        table = self.denoiser.encode_prompts(distinct)  # (P, L)
        rows = torch.tensor([distinct.index(p) for p in prompts], device=self.device)  # (B,)
        # the "unconditional" rows: the empty prompt, or the negative prompt in its place
        negative_rows = torch.tensor([distinct.index(p) for p in negatives], device=self.device)

        def model(x, t, prompt_rows):
            return self.denoiser(x, t, table, prompt_rows)

        return classifier_free_guidance(model, rows, negative_rows, guidance_scale)

    def _negative_prompts(self, negative_prompt, prompts: list[str]) -> list[str]:
        """One negative prompt per prompt ("" when none is given), checked against the vocabulary."""
        if negative_prompt is None:
            return [""] * len(prompts)
        if isinstance(negative_prompt, str):
            negatives = [negative_prompt] * len(prompts)
        elif isinstance(negative_prompt, (list, tuple)) and all(isinstance(p, str) for p in negative_prompt):
            negatives = list(negative_prompt)
            if len(negatives) != len(prompts):
                raise ValueError(f"negative_prompt has {len(negatives)} prompts for {len(prompts)} prompts: give "
                                 "one for all, or one per prompt")
        else:
            raise TypeError(f"negative_prompt must be a string or a list of strings, got {type(negative_prompt).__name__}")
        self.denoiser.tokenizer.encode(negatives)
        return negatives

    def _edit_inputs(self, image, strength, mask, total: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The clean latents (total, 4, h, w) and latent masks (total, 1, h, w) of an img2img or inpainting call."""
        if image is None:
            if mask is not None or strength != 1.0:
                raise ValueError("strength and mask edit an image: pass image= as well")
            return None, None
        checks.strength("strength", strength)
        z = self.encode(_per_image(_images_as_model_space(image, "image"), total, "image"))
        if mask is None:
            return z, None
        pixel_mask = _per_image(_mask_as_model_space(mask), total, "mask")
        return z, latent_mask(pixel_mask, self.vae.config.downsample_factor).to(self.device)


def _images_as_model_space(images, name: str) -> torch.Tensor:
    """uint8 (B, 28, 28) pixels or float (B, 1, 32, 32) model space -> model space, or a clear error."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, uint8 (B, 28, 28) or model space (B, 1, 32, 32); "
                        f"got {type(images).__name__}")
    if images.dtype == torch.uint8 and images.dim() == 3 and tuple(images.shape[1:]) == (28, 28):
        return to_model_space(images)
    if images.is_floating_point() and images.dim() == 4 and tuple(images.shape[1:]) == (1, 32, 32):
        return images.float()
    raise ValueError(f"{name} has shape {tuple(images.shape)} and dtype {images.dtype}; expected uint8 "
                     "(B, 28, 28) pixels or float (B, 1, 32, 32) in [-1, 1]")


def _mask_as_model_space(mask) -> torch.Tensor:
    """(B, 28, 28) or (B, 1, 32, 32), bool or values in [0, 1] -> float (B, 1, 32, 32); the border is kept."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a tensor (B, 28, 28) or (B, 1, 32, 32), got {type(mask).__name__}")
    m = mask.float()
    if not torch.isfinite(m).all() or m.min() < 0 or m.max() > 1:
        raise ValueError("mask values must lie in [0, 1] (1 = redraw, 0 = keep)")
    if m.dim() == 3 and tuple(m.shape[1:]) == (28, 28):
        pad = (32 - 28) // 2
        return torch.nn.functional.pad(m.unsqueeze(1), (pad, pad, pad, pad), value=0.0)
    if m.dim() == 4 and tuple(m.shape[1:]) == (1, 32, 32):
        return m
    raise ValueError(f"mask has shape {tuple(mask.shape)}; expected (B, 28, 28) or (B, 1, 32, 32)")


def _per_image(x: torch.Tensor, total: int, name: str) -> torch.Tensor:
    """One row per generated image: a single row is repeated, otherwise the count must match."""
    if x.shape[0] == 1:
        return x.expand(total, *x.shape[1:])
    if x.shape[0] != total:
        raise ValueError(f"{name} holds {x.shape[0]} images for {total} generated images: give one for all, "
                         "or one per generated image (prompts x num_images)")
    return x


def join_trajectories(parts: list[Trajectory]) -> Trajectory:
    """One trajectory from those of consecutive batches (the same timesteps, the images side by side)."""
    if len(parts) == 1:
        return parts[0]
    return Trajectory(
        parts[0].timesteps,
        [torch.cat(step) for step in zip(*(t.x for t in parts))],
        [torch.cat(step) for step in zip(*(t.x0_pred for t in parts))],
    )
