"""Pieces of a MaskUNet training step that do not depend on any platform: encoding and the loss."""
import torch
import torch.nn.functional as F


@torch.no_grad()
def encode_images(vae, pixel_values: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Images in [-1, 1] -> latents sampled from the VAE posterior, times its scaling factor."""
    posterior = vae.encode(pixel_values.to(vae.dtype)).latent_dist
    return posterior.sample(generator=generator) * vae.config.scaling_factor


def decode_to_unit(vae, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> images in [0, 1] (B, 3, H, W), differentiable through the (frozen) VAE."""
    images = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
    return (images.float() / 2 + 0.5).clamp(0, 1)


@torch.no_grad()
def encode_prompts(text_encoder, input_ids: torch.Tensor) -> torch.Tensor:
    return text_encoder(input_ids.to(text_encoder.device))[0]


def sample_timesteps(scheduler, batch: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
    """Training timesteps, uniform over the scheduler's range (as in DDPM training)."""
    n = scheduler.config.num_train_timesteps
    return torch.randint(0, n, (batch,), generator=generator, device="cpu").to(device)


def diffusion_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    prediction = scheduler.config.prediction_type
    if prediction == "epsilon":
        return noise
    if prediction == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported scheduler prediction_type {prediction!r} (epsilon or v_prediction)")


def diffusion_loss(
    model, scheduler, latents: torch.Tensor, encoder_hidden_states: torch.Tensor,
    noise: torch.Tensor, timesteps: torch.Tensor,
) -> torch.Tensor:
    """Per-sample denoising MSE (B,) of `model` (a U-Net or MaskedUNet) at the given noise/timesteps."""
    noisy = scheduler.add_noise(latents, noise, timesteps)
    prediction = model(noisy, timesteps, encoder_hidden_states).sample
    target = diffusion_target(scheduler, latents, noise, timesteps)
    return F.mse_loss(prediction.float(), target.float(), reduction="none").flatten(1).mean(dim=1)
