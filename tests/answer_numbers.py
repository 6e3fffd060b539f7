"""The numbers the reference answers quote from the notebooks' quick-mode output.

Each entry ties one number, written exactly as the answer writes it, to the value in the
notebook's ``results_NN.json`` that it quotes:

    (question, path into results["values"], the number as written, tolerance)

Two tests use this table (``tests/test_notebooks.py``): the number must appear in the
question's reference answer (so the table and the answer cannot drift apart), and a
quick run of the notebook must reproduce it within the tolerance (so a change of code
or model that moves a quoted number fails, naming the question). The tolerance is half a
unit of the last written digit, or more where the answer says how much a run may differ
(FID at 100 images: 0.1 on another CPU).
"""

from __future__ import annotations

FID = 0.1  # what the answers allow a quick FID to move on another CPU
RUN = 0.005  # notebook 07's own short training run: its losses on another CPU
RUN_FID = 1.0  # ... and the FID of its samples, which a different trajectory moves more

QUOTED: dict[str, list[tuple[str, tuple, str, float]]] = {
    "03": [
        ("Q3.4", ("cross_attention_mean_per_token", "down_blocks.2.1.transformer_blocks.0.attn2", 5), "0.283", 0.0006),
        ("Q3.4", ("cross_attention_mean_per_token", "down_blocks.4.1.transformer_blocks.0.attn2", 5), "0.258", 0.0006),
        ("Q3.4", ("cross_attention_mean_per_token", "mid_block.1.transformer_blocks.0.attn2", 5), "0.186", 0.0006),
        ("Q3.4", ("cross_attention_mean_per_token", "up_blocks.2.1.transformer_blocks.0.attn2", 5), "0.439", 0.0006),
        ("Q3.4", ("cross_attention_mean_per_token", "up_blocks.3.1.transformer_blocks.0.attn2", 5), "0.466", 0.0006),
        ("Q3.4", ("context_position_similarity", 0), "0.07", 0.006),
        ("Q3.4", ("context_position_similarity", 5), "0.49", 0.006),
        ("Q3.7", ("denoising_loss", "0", "eps_mse"), "0.927", 0.0006),
        ("Q3.7", ("denoising_loss", "50", "eps_mse"), "0.401", 0.0006),
        ("Q3.7", ("denoising_loss", "200", "eps_mse"), "0.169", 0.0006),
        ("Q3.7", ("denoising_loss", "999", "eps_mse"), "0.0019", 0.00006),
        ("Q3.7", ("denoising_loss", "0", "z0_mse"), "0.0008", 0.00006),
        ("Q3.7", ("denoising_loss", "999", "z0_mse"), "0.406", 0.0006),
        ("Q3.8", ("prompt_effect_on_z0_hat", "200"), "0.086", 0.0006),
        ("Q3.8", ("prompt_effect_on_z0_hat", "500"), "0.271", 0.0006),
        ("Q3.8", ("prompt_effect_on_z0_hat", "800"), "0.507", 0.0006),
        ("Q3.8", ("prompt_effect_on_z0_hat", "950"), "0.516", 0.0006),
        ("Q3.9", ("skip_ablation_eps_mse", "0.0", "900"), "1.02", 0.006),
        ("Q3.9", ("skip_ablation_eps_mse", "1.0", "900"), "0.0047", 0.00006),
        ("Q3.9", ("skip_ablation_eps_mse", "0.0", "10"), "1.31", 0.006),
        ("Q3.9", ("skip_ablation_eps_mse", "1.0", "10"), "0.66", 0.006),
        ("Q3.9", ("skip_ablation_samples", "0.0", "latent_std"), "14.9", 0.06),
        ("Q3.9", ("skip_ablation_samples", "1.0", "latent_std"), "0.97", 0.006),
    ],
    "04": [
        ("Q4.1", ("psnr_per_class", "trouser"), "33.11", 0.006),
        ("Q4.1", ("psnr_per_class", "shirt"), "26.76", 0.006),
        ("Q4.1", ("psnr_test",), "28.68", 0.006),
    ],
    "05": [
        ("Q5.2", ("context_relative_change", "sneaker_to_sandal", 0), "1.79", 0.006),
        ("Q5.2", ("context_relative_change", "sneaker_to_sandal", 5), "1.37", 0.006),
        ("Q5.3", ("class_word_attention_share", "4x4", 0), "0.413", 0.0006),
        ("Q5.3", ("class_word_attention_share", "4x4", 5), "0.546", 0.0006),
        ("Q5.3", ("class_word_attention_share", "4x4", 9), "0.718", 0.0006),
        ("Q5.3", ("class_word_attention_share", "2x2", 0), "0.254", 0.0006),
        ("Q5.3", ("class_word_attention_share", "2x2", 9), "0.578", 0.0006),
        ("Q5.4", ("prompt_influence", "50", "right_vs_empty"), "0.0115", 0.00006),
        ("Q5.4", ("prompt_influence", "50", "right_vs_wrong"), "0.032", 0.0006),
        ("Q5.4", ("prompt_influence", "150", "right_vs_empty"), "0.023", 0.0006),
        ("Q5.4", ("prompt_influence", "150", "right_vs_wrong"), "0.070", 0.0006),
        ("Q5.4", ("prompt_influence", "150", "error_right"), "0.209", 0.0006),
        ("Q5.4", ("prompt_influence", "350", "right_vs_empty"), "0.045", 0.0006),
        ("Q5.4", ("prompt_influence", "350", "right_vs_wrong"), "0.17", 0.006),
        ("Q5.4", ("prompt_influence", "999", "right_vs_empty"), "0.497", 0.0006),
        ("Q5.4", ("prompt_influence", "999", "right_vs_wrong"), "0.817", 0.0006),
        ("Q5.5", ("guidance_pixel_stats", "0", "std_across_seeds"), "0.436", 0.0006),
        ("Q5.5", ("guidance_pixel_stats", "1", "std_across_seeds"), "0.328", 0.0006),
        ("Q5.5", ("guidance_pixel_stats", "2", "std_across_seeds"), "0.298", 0.0006),
        ("Q5.5", ("guidance_pixel_stats", "3", "std_across_seeds"), "0.287", 0.0006),
        ("Q5.5", ("guidance_pixel_stats", "5", "std_across_seeds"), "0.285", 0.0006),
        ("Q5.5", ("guidance_pixel_stats", "8", "std_across_seeds"), "0.294", 0.0006),
        ("Q5.5", ("guidance_pixel_stats", "0", "brightness"), "-0.53", 0.006),
        ("Q5.5", ("guidance_pixel_stats", "5", "brightness"), "-0.45", 0.006),
        ("Q5.5", ("guidance_pixel_stats", "8", "brightness"), "-0.47", 0.006),
        ("Q5.7", ("guidance", "0", "fid"), "12.11", FID),
        ("Q5.7", ("guidance", "1", "fid"), "9.25", FID),
        ("Q5.7", ("guidance", "2", "fid"), "8.47", FID),
        ("Q5.7", ("guidance", "3", "fid"), "10.10", FID),
        ("Q5.7", ("guidance", "5", "fid"), "12.89", FID),
        ("Q5.7", ("guidance", "8", "fid"), "15.88", FID),
        ("Q5.7", ("guidance", "1", "accuracy"), "0.88", 0.006),
        ("Q5.7", ("guidance", "2", "accuracy"), "0.98", 0.006),
        ("Q5.7", ("guidance", "0", "diversity"), "2.29", 0.006),
        ("Q5.7", ("guidance", "2", "diversity"), "0.69", 0.006),
        ("Q5.7", ("guidance", "8", "diversity"), "0.57", 0.006),
        ("Q5.7", ("real_floor", "fid"), "7.81", FID),
        ("Q5.7", ("best_guidance_by_fid",), "2", 0.0),
    ],
    "07": [
        ("Q7.1", ("training", "history", 0, "loss"), "0.597", RUN),
        ("Q7.1", ("training", "history", 1, "loss"), "0.210", RUN),
        ("Q7.1", ("training", "history", 3, "loss"), "0.175", RUN),
        ("Q7.2", ("models", "main (100 ep.)", "heldout_loss"), "0.103", 0.0006),
        ("Q7.2", ("models", "epoch 1", "heldout_loss"), "0.169", 0.0006),
        ("Q7.2", ("models", "epoch 1", "by_guidance", "2", "fid"), "52.9", FID),
        ("Q7.2", ("models", "main (100 ep.)", "by_guidance", "2", "fid"), "8.8", FID),
        ("Q7.4", ("models", "epoch 1", "by_guidance", "3", "fid"), "51.4", FID),
        ("Q7.4", ("models", "epoch 2", "by_guidance", "3", "fid"), "19.0", FID),
        ("Q7.4", ("models", "epoch 10", "by_guidance", "3", "fid"), "10.2", FID),
        ("Q7.4", ("models", "epoch 50", "by_guidance", "3", "fid"), "10.3", FID),
        ("Q7.4", ("models", "epoch 2", "by_guidance", "2", "fid"), "20.4", FID),
        ("Q7.4", ("models", "epoch 25", "by_guidance", "2", "fid"), "9.1", FID),
        ("Q7.4", ("models", "epoch 1", "by_guidance", "3", "accuracy"), "0.29", 0.006),
        ("Q7.4", ("models", "you (4 ep.)", "by_guidance", "3", "fid"), "28.2", RUN_FID),
        ("Q7.4", ("models", "you (4 ep.)", "by_guidance", "2", "fid"), "29.8", RUN_FID),
        ("Q7.4", ("models", "you (4 ep.)", "accuracy"), "0.60", 0.05),
        ("Q7.5", ("models", "you, raw (4 ep.)", "fid"), "24.7", RUN_FID),
        ("Q7.5", ("models", "you, raw (4 ep.)", "accuracy"), "0.67", 0.05),
        ("Q7.5", ("models", "you (4 ep.)", "heldout_loss"), "0.160", RUN),
        ("Q7.5", ("models", "you, raw (4 ep.)", "heldout_loss"), "0.168", RUN),
        ("Q7.6", ("fid_vs_images", "real", "200"), "3.57", 0.006),
        ("Q7.6", ("fid_vs_images", "real", "500"), "1.63", 0.006),
        ("Q7.8", ("models", "main (100 ep.)", "train_loss_same_estimator"), "0.103", 0.0006),
        ("Q7.8", ("models", "epoch 1", "train_loss_same_estimator"), "0.170", 0.0006),
    ],
    "06": [
        ("Q6.2", ("quality", "ddpm/5", "fid"), "13.18", FID),
        ("Q6.2", ("quality", "ddpm/10", "fid"), "11.90", FID),
        ("Q6.2", ("quality", "ddpm/20", "fid"), "10.63", FID),
        ("Q6.2", ("quality", "ddim/5", "fid"), "11.39", FID),
        ("Q6.2", ("quality", "ddim/10", "fid"), "10.34", FID),
        ("Q6.2", ("quality", "ddim/20", "fid"), "9.78", FID),
        ("Q6.2", ("quality", "dpmsolver++/5", "fid"), "10.24", FID),
        ("Q6.2", ("quality", "dpmsolver++/10", "fid"), "9.83", FID),
        ("Q6.2", ("quality", "dpmsolver++/20", "fid"), "9.42", FID),
        ("Q6.2", ("real_floor", "fid"), "7.81", FID),
        ("Q6.5", ("latent_rms", "ddpm"), "1.042", 0.0006),
        ("Q6.5", ("latent_rms", "ddim"), "1.060", 0.0006),
        ("Q6.5", ("latent_rms", "dpmsolver++"), "1.053", 0.0006),
        ("Q6.5", ("latent_rms", "real"), "1.007", 0.0006),
        ("Q6.6", ("determinism", "DDIM eta = 1, same x_T, step-noise seeds 1 and 2", "rms_difference"), "0.374", 0.0006),
        ("Q6.6", ("determinism", "DDIM eta = 0, x_T from two different seeds", "rms_difference"), "0.513", 0.0006),
    ],
}


def lookup(values: dict, path: tuple):
    """The value at ``path`` (keys and list indices) in a results file's ``values``."""
    node = values
    for key in path:
        node = node[key]
    return node


# The numbers the reference answers quote from a full (default-parameter) run, checked against the results
# files of such a run committed in answers/full_mode/ (a full run takes an hour on a 2-core CPU, too long for
# the test suite; rerun it with `python -m coursekit full-mode` after a change of model or notebook).
DEFAULT_QUOTED: dict[str, list[tuple[str, tuple, str, float]]] = {
    "03": [
        ("Q3.4", ("cross_attention_mean_per_token", "down_blocks.2.1.transformer_blocks.0.attn2", 5), "0.283", 0.0006),
        ("Q3.4", ("cross_attention_mean_per_token", "up_blocks.3.1.transformer_blocks.0.attn2", 5), "0.466", 0.0006),
        ("Q3.7", ("denoising_loss", "0", "eps_mse"), "0.931", 0.0006),
        ("Q3.7", ("denoising_loss", "50", "eps_mse"), "0.414", 0.0006),
        ("Q3.7", ("denoising_loss", "200", "eps_mse"), "0.177", 0.0006),
        ("Q3.7", ("denoising_loss", "999", "z0_mse"), "0.404", 0.0006),
        ("Q3.8", ("prompt_effect_on_z0_hat", "500"), "0.271", 0.0006),
        ("Q3.8", ("prompt_effect_on_z0_hat", "950"), "0.516", 0.0006),
        ("Q3.9", ("skip_ablation_eps_mse", "1.0", "900"), "0.0047", 0.00006),
        ("Q3.9", ("skip_ablation_samples", "0.0", "latent_std"), "14.8", 0.06),
        ("Q3.9", ("skip_ablation_samples", "1.0", "latent_std"), "1.02", 0.006),
    ],
    "04": [
        ("Q4.1", ("psnr_test",), "28.69", 0.006),
        ("Q4.1", ("psnr_per_class", "shirt"), "27.20", 0.006),
        ("Q4.1", ("psnr_per_class", "bag"), "27.48", 0.006),
        ("Q4.1", ("psnr_per_class", "sandal"), "27.78", 0.006),
        ("Q4.1", ("psnr_per_class", "trouser"), "32.27", 0.006),
        ("Q4.1", ("psnr_per_class", "ankle boot"), "30.22", 0.006),
        ("Q4.1", ("psnr_codes", "PCA, 256 components"), "25.45", 0.006),
        ("Q4.1", ("psnr_codes", "16x16 thumbnail, bicubic"), "19.41", 0.006),
        ("Q4.3", ("kl_variance_term",), "1,045", 0.6),
        ("Q4.3", ("kl_mean",), "1,187", 0.6),
        ("Q4.3", ("kl_mean_term",), "142", 0.6),
    ],
    "05": [
        ("Q5.3", ("class_word_attention_share", "4x4", 0), "0.413", 0.0006),
        ("Q5.3", ("class_word_attention_share", "4x4", -1), "0.750", 0.0006),
        ("Q5.4", ("prompt_influence", "50", "right_vs_empty"), "0.0117", 0.00006),
        ("Q5.4", ("prompt_influence", "50", "right_vs_wrong"), "0.035", 0.0006),
        ("Q5.4", ("prompt_influence", "999", "right_vs_empty"), "0.495", 0.0006),
        ("Q5.4", ("prompt_influence", "999", "right_vs_wrong"), "0.825", 0.0006),
        ("Q5.5", ("guidance_pixel_stats", "0", "std_across_seeds"), "0.444", 0.0006),
        ("Q5.5", ("guidance_pixel_stats", "1", "std_across_seeds"), "0.336", 0.0006),
        ("Q5.5", ("guidance_pixel_stats", "3", "std_across_seeds"), "0.290", 0.0006),
        ("Q5.7", ("real_floor", "fid"), "0.681", 0.0006),
        ("Q5.7", ("guidance", "0", "fid"), "3.60", 0.006),
        ("Q5.7", ("guidance", "1", "fid"), "2.74", 0.006),
        ("Q5.7", ("guidance", "2", "fid"), "2.28", 0.006),
        ("Q5.7", ("guidance", "3", "fid"), "3.62", 0.006),
        ("Q5.7", ("guidance", "5", "fid"), "6.10", 0.006),
        ("Q5.7", ("guidance", "8", "fid"), "9.01", 0.006),
        ("Q5.7", ("guidance", "0", "accuracy"), "0.105", 0.0006),
        ("Q5.7", ("guidance", "1", "accuracy"), "0.862", 0.0006),
        ("Q5.7", ("guidance", "2", "accuracy"), "0.984", 0.0006),
        ("Q5.7", ("guidance", "0", "diversity"), "2.23", 0.006),
        ("Q5.7", ("guidance", "8", "diversity"), "0.62", 0.006),
    ],
    "06": [
        ("Q6.2", ("real_floor", "fid"), "0.681", 0.0006),
        ("Q6.2", ("quality", "ddpm/5", "fid"), "8.49", 0.006),
        ("Q6.2", ("quality", "ddpm/100", "fid"), "3.79", 0.006),
        ("Q6.2", ("quality", "ddim/5", "fid"), "6.83", 0.006),
        ("Q6.2", ("quality", "ddim/20", "fid"), "4.23", 0.006),
        ("Q6.2", ("quality", "ddim/100", "fid"), "3.24", 0.006),
        ("Q6.2", ("quality", "dpmsolver++/5", "fid"), "5.41", 0.006),
        ("Q6.2", ("quality", "dpmsolver++/20", "fid"), "3.66", 0.006),
        ("Q6.2", ("quality", "dpmsolver++/100", "fid"), "3.09", 0.006),
        ("Q6.5", ("latent_rms", "ddpm"), "0.989", 0.0006),
        ("Q6.5", ("latent_rms", "ddim"), "1.065", 0.0006),
    ],
    "07": [
        ("Q7.4", ("models", "you (5 ep.)", "by_guidance", "3", "fid"), "4.081", RUN_FID),
        ("Q7.4", ("models", "epoch 5", "by_guidance", "3", "fid"), "4.083", 0.0006),
        ("Q7.4", ("models", "you (5 ep.)", "by_guidance", "2", "fid"), "4.395", RUN_FID),
        ("Q7.4", ("models", "epoch 5", "by_guidance", "2", "fid"), "4.369", 0.0006),
        ("Q7.5", ("models", "you, raw (5 ep.)", "by_guidance", "3", "fid"), "5.55", RUN_FID),
        ("Q7.5", ("models", "you (5 ep.)", "accuracy"), "0.971", 0.02),
        ("Q7.5", ("models", "you, raw (5 ep.)", "accuracy"), "0.956", 0.02),
        ("Q7.5", ("models", "you (5 ep.)", "heldout_loss"), "0.1293", RUN),
        ("Q7.5", ("models", "you, raw (5 ep.)", "heldout_loss"), "0.1337", RUN),
        ("Q7.9", ("models", "main (100 ep.)", "by_guidance", "3", "fid"), "3.46", 0.006),
        ("Q7.9", ("models", "main (100 ep.)", "by_guidance", "2", "fid"), "2.35", 0.006),
        ("Q7.9", ("autoencoder_floor", "fid"), "1.07", 0.006),
    ],
}


def number(text: str) -> float:
    """A number as an answer writes it ("1,045", "-0.53")."""
    return float(text.replace(",", ""))
