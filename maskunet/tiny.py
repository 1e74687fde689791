"""A tiny Stable-Diffusion-architecture pipeline built offline from configs.

It stands in for SD1.5 in tests and the embedded default job: same classes, same
`save_pretrained`/`from_pretrained` folder layout, random seeded weights, and a CLIP
tokenizer generated locally (no download).
"""
import hashlib
import json
import shutil
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

# Words the sample dataset's captions use; each gets a whole-word BPE token.
CAPTION_WORDS = (
    "a an the of on in at and with photo picture image drawing small large big tiny "
    "red green blue yellow orange purple white black gray pink cyan brown "
    "circle square triangle ring cross star stripe stripes dot dots shape shapes "
    "left right top bottom center middle corner upper lower background foreground "
    "two three several one"
).split()

MAX_TOKENS = 77

TINY_UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=16,
)

TINY_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(16, 32, 32, 32),  # 4 levels: 8x downsampling like SD
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=1,
    norm_num_groups=16,
    sample_size=64,
)

# The pretrained shapes base (`maskunet init-base --pretrained`, `maskunet pretrain-base`):
# 64 px images, a 4x VAE (16x16x4 latents: at 8x, 8x8 latents, a small shape is under two
# latent pixels; see the README's measurements), and a U-Net with cross-attention in its
# two highest-resolution up blocks, conditioned on a small CLIP text encoder.
SHAPES_RESOLUTION = 64

SHAPES_VAE = dict(TINY_VAE, block_out_channels=(32, 64, 64), down_block_types=("DownEncoderBlock2D",) * 3,
                  up_block_types=("UpDecoderBlock2D",) * 3, sample_size=SHAPES_RESOLUTION,
                  # One group: 16 groups of 2 channels throw away most of a flat colour's
                  # information at every norm; measured, it learns ~2x faster.
                  norm_num_groups=1)

SHAPES_UNET = dict(TINY_UNET, sample_size=16, block_out_channels=(64, 96, 96), cross_attention_dim=64,
                   attention_head_dim=8, norm_num_groups=8)

SHAPES_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)

# SD1.5's noise schedule.
SD_SCHEDULE = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
)


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2/CLIP byte-level alphabet: every byte maps to a printable unicode symbol.
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    keep += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(keep, chars)}


def learn_merges(words) -> list[tuple[str, str]]:
    """Byte-pair merges learned on `words` until each is one symbol.

    Learned like real BPE (most frequent pair first, merged everywhere), so encoding, which
    replays merges by rank, rebuilds every word as a single whole-word token.
    """
    corpus = [tuple(w[:-1]) + (w[-1] + "</w>",) for w in dict.fromkeys(words)]
    merges: list[tuple[str, str]] = []
    while any(len(w) > 1 for w in corpus):
        counts: dict[tuple[str, str], int] = {}
        for word in corpus:
            for pair in zip(word, word[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        best = max(counts, key=lambda pair: (counts[pair], pair))  # ties: deterministic
        merges.append(best)
        corpus = [_merge_pair(word, best) for word in corpus]
    return merges


def _merge_pair(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out, i = [], 0
    while i < len(word):
        if word[i : i + 2] == pair:
            out.append(pair[0] + pair[1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def write_tokenizer_files(out_dir: Path, words=CAPTION_WORDS) -> None:
    """Write a CLIP byte-level BPE `vocab.json` + `merges.txt` with whole-word merges."""
    symbols = list(_bytes_to_unicode().values())
    merges = learn_merges(words)
    vocab = symbols + [s + "</w>" for s in symbols] + [a + b for a, b in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    ids = {tok: i for i, tok in enumerate(dict.fromkeys(vocab))}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(ids))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")


def build_tokenizer(work_dir: Path) -> CLIPTokenizer:
    write_tokenizer_files(work_dir)
    # from_pretrained reads vocab.json + merges.txt exactly as for a real SD1.5 tokenizer folder.
    return CLIPTokenizer.from_pretrained(str(work_dir), model_max_length=MAX_TOKENS, pad_token="<|endoftext|>")


def build_tiny_pipeline(work_dir: str | Path, seed: int = 0, shapes: bool = False,
                        resolution: int = SHAPES_RESOLUTION) -> StableDiffusionPipeline:
    """Build the tiny pipeline with seeded random weights (tokenizer files go to work_dir).

    `shapes` selects the (larger) architecture of the pretrained shapes base, untrained, for
    images of `resolution` px.
    """
    work_dir = Path(work_dir)
    tokenizer = build_tokenizer(work_dir / "_tokenizer_src")
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            **(SHAPES_TEXT if shapes else TINY_TEXT),
            max_position_embeddings=MAX_TOKENS,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    if shapes:
        unet = UNet2DConditionModel(**dict(SHAPES_UNET, sample_size=resolution // 4))
        vae = AutoencoderKL(**dict(SHAPES_VAE, sample_size=resolution))
    else:
        unet, vae = UNet2DConditionModel(**TINY_UNET), AutoencoderKL(**TINY_VAE)
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        # The shapes base predicts v (as SD2 does on the same schedule): an epsilon model this
        # small and briefly trained cannot lay out an image from pure noise (measured).
        scheduler=DDIMScheduler(**{**SD_SCHEDULE, **({"prediction_type": "v_prediction"} if shapes else {})}),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_tiny_base(out_dir: str | Path, seed: int = 0) -> Path:
    """Write the tiny base pipeline folder (loadable with StableDiffusionPipeline.from_pretrained)."""
    out_dir = Path(out_dir).expanduser()
    pipe = build_tiny_pipeline(out_dir, seed=seed)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    for f in (out_dir / "_tokenizer_src").iterdir():
        f.unlink()
    (out_dir / "_tokenizer_src").rmdir()
    return out_dir


# The pretrained shapes base shipped with the package (`maskunet pretrain-base` output).
SHAPES_BASE_ASSET = Path(__file__).parent / "assets" / "shapes-base"


def install_shapes_base(out_dir: str | Path) -> Path:
    """Copy the shipped pretrained shapes base to `out_dir` (a normal diffusers folder)."""
    out_dir = Path(out_dir).expanduser()
    if not (SHAPES_BASE_ASSET / "model_index.json").exists():
        raise FileNotFoundError(f"the pretrained shapes base is missing from this install ({SHAPES_BASE_ASSET})")
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(SHAPES_BASE_ASSET, tmp)
    tmp.rename(out_dir)  # a concurrent or interrupted install never leaves half a folder
    return out_dir


# sha256 (first 16 hex digits) of the U-Net weights of earlier shipped shapes bases: a folder
# holding one of these was installed by an earlier version and is replaced by the current one.
_EARLIER_SHAPES_BASES = {"555dcea34f5fa997"}
_UNET_WEIGHTS = Path("unet") / "diffusion_pytorch_model.safetensors"


def _unet_digest(folder: Path) -> str | None:
    path = folder / _UNET_WEIGHTS
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.exists() else None


def _stale_shapes_base(folder: Path) -> bool:
    """True when `folder` holds an earlier shipped shapes base (never a user's own weights)."""
    digest = _unet_digest(folder)
    return digest in _EARLIER_SHAPES_BASES and digest != _unet_digest(SHAPES_BASE_ASSET)


def ensure_tiny_base(out_dir: str | Path, seed: int = 0, pretrained: bool = False) -> Path:
    """Create the tiny base at `out_dir` unless a pipeline is already there: the shipped
    pretrained shapes base, or random weights of the small architecture. An earlier shipped
    shapes base found there is upgraded to the current one."""
    out_dir = Path(out_dir).expanduser()
    if pretrained and (out_dir / "model_index.json").exists() and _stale_shapes_base(out_dir):
        old = out_dir.with_name(out_dir.name + ".stale")
        shutil.rmtree(old, ignore_errors=True)
        out_dir.rename(old)
        install_shapes_base(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    if not (out_dir / "model_index.json").exists():
        if pretrained:
            install_shapes_base(out_dir)
        else:
            save_tiny_base(out_dir, seed=seed)
    return out_dir
