"""diffusion_lib: a miniature Stable Diffusion (latent diffusion) on Fashion-MNIST.

Modules, one job each. The math:

* ``schedules``        - noise schedules, the forward process q(x_t | x_0), epsilon / x_0 / v
* ``samplers``         - DDPM, DDIM and DPM-Solver++(2M)
* ``guidance``         - classifier-free guidance
* ``editing``          - img2img (SDEdit) and inpainting
* ``metrics``          - Frechet distance, KID, conditional accuracy

The networks:

* ``layers``           - convolutions, normalisation, up/down sampling (and their CPU shortcuts)
* ``attention``        - self- and cross-attention, the transformer block
* ``autoencoder``      - the KL autoencoder (pixels <-> scaled latents)
* ``text_encoder``     - prompt tokenizer and transformer
* ``unet``             - the cross-attention U-Net
* ``denoiser``         - prompt encoder + U-Net + schedule, as one trainable model
* ``classifier``       - the judge network whose features FID-FMNIST uses

Using and training them:

* ``pipeline``         - text -> image, end to end
* ``evaluator``        - FID-FMNIST, KID and accuracy of generated images, beside the real-data floor
* ``train``            - the denoiser's trainer: the loss, the step, the epoch, the loop
* ``train_config``     - a training run's settings, and the model they describe
* ``train_state``      - a run's files after each epoch, and how ``--resume`` reads them back
* ``distributed``      - several processes (torchrun): the process group, each rank's slice
* ``train_cli``        - the trainer's command line
* ``lr_schedule``      - the learning rate: warm-up, then cosine
* ``train_vae``        - the autoencoder's trainer
* ``train_classifier`` - the judge classifier's trainer
* ``sampling_job``     - large sampling jobs streamed to disk
* ``plotting``         - sample grids and curves
* ``bench``            - training and sampling speed, beside diffusers' U-Net

Around them:

* ``data``             - Fashion-MNIST / MNIST loading, model-space conversions
* ``device``           - device choice (CUDA, MPS, CPU) and what depends on it
* ``allocator``        - freed host memory kept for reuse (no page faults in each step)
* ``checkpoint``       - a component: safetensors + JSON, checked against SHA256SUMS
* ``atomic``           - crash-safe writes: files and their SHA256SUMS replaced as one unit
* ``checks``           - argument checks with messages that name the fix
* ``__main__``         - the command line
"""

__version__ = "0.1.0"
