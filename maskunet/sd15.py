"""Stable Diffusion 1.5's component configs, for building the real architecture offline
(random weights or the meta device) in tests, benchmarks and the real-scale rehearsal."""

SD15_UNET_CONFIG = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
    flip_sin_to_cos=True,
    freq_shift=0,
)

# The other SD1.5 components' configs (stable-diffusion-v1-5/stable-diffusion-v1-5).
SD15_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    norm_num_groups=32,
    act_fn="silu",
    sample_size=512,
    scaling_factor=0.18215,
)

SD15_TEXT_CONFIG = dict(  # CLIP ViT-L/14 text tower
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
)

SD15_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    set_alpha_to_one=False,
    skip_prk_steps=True,
    steps_offset=1,
    prediction_type="epsilon",
)


def save_sd15_random_base(out_dir, seed: int = 0):
    """A pipeline folder with the exact SD1.5 architecture and random fp16 weights, built offline.

    For rehearsing the real-scale job without downloads: every component has SD1.5's config
    (the text encoder's special-token ids follow the local tokenizer, which stands in for the
    49,408-token CLIP vocabulary). Loads through the same from_pretrained path as SD1.5.
    """
    import shutil
    from pathlib import Path

    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from maskunet.tiny import build_tokenizer

    out_dir = Path(out_dir).expanduser()
    source = out_dir.parent / f".{out_dir.name}-tokenizer-src"
    tokenizer = build_tokenizer(source)
    shutil.rmtree(source)
    torch.manual_seed(seed)
    text_config = CLIPTextConfig(**SD15_TEXT_CONFIG, bos_token_id=tokenizer.bos_token_id,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(**SD15_VAE_CONFIG), text_encoder=CLIPTextModel(text_config), tokenizer=tokenizer,
        unet=UNet2DConditionModel(**SD15_UNET_CONFIG), scheduler=PNDMScheduler(**SD15_SCHEDULER_CONFIG),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.to(torch.float16).save_pretrained(out_dir, safe_serialization=True)
    return out_dir
