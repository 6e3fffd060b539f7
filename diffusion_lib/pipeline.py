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
from .data import to_pixels
from .denoiser import Denoiser, load_denoiser
from .device import resolve_device
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
        side = 32 // cfg.downsample_factor
        return (n, cfg.latent_channels, side, side)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents z (B, 4, h, w) -> model-space images (B, 1, 4h, 4w)."""
        # x = D(z / scale_factor): undo the unit-variance scaling before decoding
        return self.vae.decode(latents.to(self.device) / self.vae.config.scale_factor)

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
    ) -> PipelineOutput:
        """Generate ``num_images`` images per prompt.

        :param prompt: one prompt or a list; ``""`` is unconditional
        :param num_images: images per prompt (so ``len(prompts) * num_images`` in all)
        :param guidance_scale: w of classifier-free guidance; 0 = unconditional, 1 = conditional
        :param sampler: ``ddpm``, ``ddim`` or ``dpmsolver++``
        :param seed: seed of a CPU generator (same images on CPU and GPU); or pass ``generator``
        :param batch_size: images per sampler call (bounds memory; results do not depend on it
            except through the order in which noise is drawn)
        """
        prompts = self.check_request(prompt, num_images, num_inference_steps, sampler, guidance_scale, eta,
                                     timestep_spacing)
        batch_size = checks.integer("batch_size", batch_size, 1)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        tokenizer = self.denoiser.tokenizer
        # a prompt without words ("", "!!!") is the unconditional prompt: label -1
        labels = [-1 if (index := tokenizer.class_index(p)) is None else index for p in prompts]
        all_prompts = [p for p in prompts for _ in range(num_images)]
        all_labels = torch.tensor([lab for lab in labels for _ in range(num_images)], dtype=torch.long)
        if generator is None:
            seed = checks.seed("seed", seed) if seed is not None else torch.seed() % 2**63
            generator = torch.Generator().manual_seed(seed)

        latents, trajectories = [], []
        for start in range(0, len(all_prompts), batch_size):
            chunk = all_prompts[start : start + batch_size]
            # the prompt encoder runs once per distinct prompt at each step (here at most 11 with
            # the empty one, whatever the batch), and every image looks its prompt's context up
            distinct = list(dict.fromkeys(chunk + [""]))
            table = self.denoiser.encode_prompts(distinct)  # (P, L)
            rows = torch.tensor([distinct.index(p) for p in chunk], device=self.device)  # (B,)

            def model(x, t, prompt_rows, table=table):
                return self.denoiser(x, t, table, prompt_rows)

            empty_row = torch.tensor([distinct.index("")], device=self.device)
            model_fn = classifier_free_guidance(model, rows, empty_row, guidance_scale)
            result = sample(
                model_fn,
                self.latent_shape(len(chunk)),
                self.schedule,
                sampler=sampler,
                num_inference_steps=num_inference_steps,
                prediction_type=self.denoiser.prediction_type,
                eta=eta,
                timestep_spacing=timestep_spacing,
                generator=generator,
                return_trajectory=return_trajectory,
                progress=progress,
                device=self.device,
            )
            if return_trajectory:
                result, traj = result
                trajectories.append(traj)
            latents.append(result)
        z0 = torch.cat(latents)
        x = torch.cat([self.decode(z) for z in z0.split(batch_size)]).float().cpu()
        trajectory = None
        if return_trajectory:
            trajectory = trajectories[0]
            if len(trajectories) > 1:
                trajectory = Trajectory(
                    trajectories[0].timesteps,
                    [torch.cat(parts) for parts in zip(*(t.x for t in trajectories))],
                    [torch.cat(parts) for parts in zip(*(t.x0_pred for t in trajectories))],
                )
        return PipelineOutput(to_pixels(x), all_labels, all_prompts, x, z0.cpu(), trajectory)
