"""diffusion_lib: a miniature Stable Diffusion (latent diffusion) on Fashion-MNIST.

Modules, one job each:

* ``data``         - Fashion-MNIST / MNIST loading, model-space conversions
* ``schedules``    - noise schedules and the forward process q(x_t | x_0)
* ``samplers``     - DDPM, DDIM and DPM-Solver++(2M)
* ``guidance``     - classifier-free guidance
* ``autoencoder``  - the KL autoencoder (pixels <-> latents)
* ``text_encoder`` - prompt tokenizer and transformer
* ``unet``         - the cross-attention U-Net denoiser
* ``denoiser``     - prompt encoder + U-Net + schedule, as one trainable model
* ``train``        - the denoiser's trainer
* ``pipeline``     - text -> image, end to end
* ``evaluator``    - classifier, FID-FMNIST, KID, conditional accuracy
* ``checkpoint``   - safetensors + JSON + SHA256SUMS, atomic writes
"""

__version__ = "0.1.0"
