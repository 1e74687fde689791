"""The paper's baselines on the same U-Net: LoRA (through PEFT, as diffusers does) and full
fine-tuning, with their export formats and on/off switches for paired comparisons.

torch + diffusers + peft only. Export formats (what `MaskUNetPipeline.from_base(base, masks=DIR)`
accepts besides a mask-generator folder):

    lora  DIR/pytorch_lora_weights.safetensors   diffusers LoRA file (keys `unet.<module>.lora_A/B.weight`,
                                                 rank and alpha in its metadata): `pipe.load_lora_weights(DIR)`
    full  DIR/config.json + diffusion_pytorch_model.safetensors   a diffusers UNet2DConditionModel folder
"""
import json
import math
from pathlib import Path

import torch
from torch import nn

from maskunet.layers import select_layers

LORA_FILE = "pytorch_lora_weights.safetensors"
UNET_WEIGHTS = "diffusion_pytorch_model.safetensors"
ADAPTER = "default"


# Where a training run puts its trained weights, per method: <export_dir>/<run>/<folder>.
EXPORT_FOLDERS = {"masks": "generator", "lora": "lora", "full": "unet"}
KIND_NAMES = {"masks": "mask generator", "lora": "LoRA", "full": "fine-tuned U-Net"}


def find_weights(folder: str | Path) -> tuple[str, Path]:
    """(kind, weights folder) for trained weights of any method: a weights folder itself, or a
    training run's export folder `<export_dir>/<run>/` holding one of generator/, lora/, unet/."""
    folder = Path(folder).expanduser()
    try:
        return weights_kind(folder), folder
    except ValueError as not_weights:
        inside = [folder / name for name in EXPORT_FOLDERS.values() if (folder / name).is_dir()]
        if not inside:
            raise ValueError(f"{not_weights}, nor a run's export folder with "
                             f"{', '.join(n + '/' for n in EXPORT_FOLDERS.values())}") from None
    if len(inside) > 1:
        raise ValueError(f"{folder} holds the weights of several runs' methods ({', '.join(p.name for p in inside)}): "
                         "pass one of those folders")
    return weights_kind(inside[0]), inside[0]


def weights_kind(folder: str | Path) -> str:
    """'masks' | 'lora' | 'full' for an exported folder; ValueError when it is none of them."""
    folder = Path(folder)
    if (folder / LORA_FILE).exists():
        return "lora"
    config = folder / "config.json"
    if not config.exists():
        raise ValueError(f"{folder} holds neither a mask generator, a LoRA ({LORA_FILE}) nor a U-Net folder")
    name = json.loads(config.read_text()).get("_class_name")
    if name == "UNet2DConditionModel":
        return "full"
    if name == "MaskGenerator":
        return "masks"
    raise ValueError(f"{folder}/config.json describes a {name!r}, not a MaskGenerator or UNet2DConditionModel")


def check_fits_base(kind: str, folder: str | Path, base_unet: str | Path) -> None:
    """ValueError naming the first mismatch between trained weights of `kind` and the base U-Net
    in `base_unet` (a diffusers U-Net folder). Reads only configs and safetensors headers: no
    weights are loaded, so a command can refuse a mismatched export before it starts anything.
    Nothing to check for a base that is not a local folder with one safetensors file (a hub id)."""
    if kind == "lora":
        _check_adapter_config(Path(folder) / LORA_FILE)
    base_file = Path(base_unet) / UNET_WEIGHTS
    if not base_file.exists():
        return
    base = _tensor_shapes(base_file)
    if kind == "masks":  # the generator's config lists each masked layer as [name, out_features, fan_in]
        pairs = []
        for block in json.loads((Path(folder) / "config.json").read_text())["blocks"]:
            for name, out_features, fan_in in block["layers"]:
                shape = _base_weight(base, name, f"the mask generator in {folder} masks", base_unet)
                pairs += [(f"{name} (out features)", out_features, shape[0]),
                          (f"{name} (fan-in)", fan_in, math.prod(shape[1:]))]
        _first_shape_mismatch(folder, base_unet, pairs)
        return
    if kind == "full":
        tuned = _tensor_shapes(Path(folder) / UNET_WEIGHTS)
        missing, extra = sorted(base.keys() - tuned.keys()), sorted(tuned.keys() - base.keys())
        if missing or extra:
            raise ValueError(f"the U-Net in {folder} is not the base's architecture ({base_unet}): "
                             + (f"it lacks {len(missing)} of the base's weights, e.g. {missing[0]}" if missing
                                else f"it has {len(extra)} weights the base lacks, e.g. {extra[0]}"))
        _first_shape_mismatch(folder, base_unet, ((k, tuned[k], base[k]) for k in sorted(base)))
        return
    pairs = []
    for key, shape in sorted(_tensor_shapes(Path(folder) / LORA_FILE).items()):
        module, _, part = key.removeprefix("unet.").rpartition(".lora_")
        target = _base_weight(base, module, f"the LoRA in {folder} adapts", base_unet)
        # lora_A: (rank, in_features), lora_B: (out_features, rank) of the adapted layer's weight.
        index = 1 if part.startswith("A") else 0
        pairs.append((f"{module} ({'in' if index else 'out'} features)", shape[index], target[index]))
    _first_shape_mismatch(folder, base_unet, pairs)


def _check_adapter_config(path: Path) -> None:
    """A LoRA's scale is lora_alpha / rank, which only its adapter config (diffusers keeps it in
    the safetensors header) records: without it the adapter would load at a guessed scale."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        config = (f.metadata() or {}).get("lora_adapter_metadata", "")
    if "lora_alpha" not in config:
        raise ValueError(f"the LoRA in {path.parent} has no adapter config (rank and lora_alpha under "
                         "'lora_adapter_metadata' in its safetensors header), so its scale is unknown; export it "
                         "with train.method=lora, or diffusers' save_lora_weights(..., unet_lora_adapter_metadata=...)")


def _base_weight(base: dict[str, tuple], module: str, what: str, base_unet) -> tuple:
    if f"{module}.weight" not in base:
        raise ValueError(f"{what} {module}, which the base U-Net ({base_unet}) does not have")
    return base[f"{module}.weight"]


def _first_shape_mismatch(folder, base_unet, pairs) -> None:
    for name, theirs, base in pairs:
        if theirs != base:
            raise ValueError(f"the export in {folder} does not fit the base U-Net ({base_unet}): {name} is "
                             f"{theirs} in the export, {base} in the base")


def _tensor_shapes(path: Path) -> dict[str, tuple]:
    from safetensors import safe_open

    if not path.exists():
        raise ValueError(f"{path} is missing")
    with safe_open(str(path), framework="numpy") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def lora_target_modules(unet: nn.Module, selection: str) -> list[str]:
    """Full module names LoRA adapts: the same selection syntax (and default) as the masks."""
    return [name for layers in select_layers(unet, selection).values() for name, _ in layers]


def add_lora(unet: nn.Module, selection: str = "attn", rank: int = 4, alpha: float | None = None,
             dropout: float = 0.0) -> list[str]:
    """Attach one PEFT LoRA adapter to `unet` (in place; base weights frozen). PEFT initialises
    the down-projection randomly and the up-projection (B) to zero, so the adapted U-Net equals
    the base until the first update. Returns the adapted module names."""
    from peft import LoraConfig

    targets = lora_target_modules(unet, selection)
    unet.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank, lora_dropout=dropout,
                        target_modules=targets, init_lora_weights=True)
    unet.add_adapter(config, adapter_name=ADAPTER)
    for name, param in unet.named_parameters():  # only the adapter's factors train, kept in fp32
        if ".lora_" in name:
            param.data = param.data.float()
            param.requires_grad_(True)
    return targets


def lora_config_of(unet: nn.Module) -> dict:
    return unet.peft_config[ADAPTER].to_dict()


def peft_state(unet: nn.Module, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The adapter's weights with PEFT keys (`<module>.lora_A.weight`), from `state` (e.g.
    gathered from ZeRO partitions, named like `unet.named_parameters()`) or the live module."""
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(unet, state_dict=state, adapter_name=ADAPTER)


def save_lora(unet: nn.Module, state: dict[str, torch.Tensor], out_dir: str | Path) -> Path:
    """Write `state` (PEFT keys) as a diffusers LoRA folder, rank/alpha/targets in the metadata."""
    from diffusers import StableDiffusionPipeline

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in state.items()}
    StableDiffusionPipeline.save_lora_weights(str(out_dir), unet_lora_layers=tensors,
                                              unet_lora_adapter_metadata=_metadata(lora_config_of(unet)))
    return out_dir


def _metadata(config: dict) -> dict:
    keep = ("r", "lora_alpha", "target_modules", "lora_dropout", "init_lora_weights", "use_dora", "bias")
    out = {k: config[k] for k in keep if k in config}
    if isinstance(out.get("target_modules"), set):
        out["target_modules"] = sorted(out["target_modules"])
    return out


def load_lora_state(folder: str | Path) -> dict[str, torch.Tensor]:
    """The LoRA file's tensors with PEFT keys (the `unet.` prefix removed); safetensors only."""
    from safetensors.torch import load_file

    state = load_file(str(Path(folder) / LORA_FILE))
    return {k[len("unet."):] if k.startswith("unet.") else k: v for k, v in state.items()}


def load_lora_into(unet: nn.Module, folder: str | Path) -> None:
    """Copy an exported LoRA into the adapter already attached to `unet` (resume)."""
    from peft.utils import set_peft_model_state_dict

    result = set_peft_model_state_dict(unet, load_lora_state(folder), adapter_name=ADAPTER)
    missing = [k for k in getattr(result, "missing_keys", []) if ".lora_" in k]
    if missing:
        raise ValueError(f"LoRA in {folder} lacks {len(missing)} adapter weights, e.g. {missing[0]}")


def enable_full_training(unet: nn.Module) -> None:
    """Full fine-tuning: every U-Net parameter trains, in fp32."""
    unet.to(torch.float32).requires_grad_(True)


def save_unet(unet: nn.Module, state: dict[str, torch.Tensor], out_dir: str | Path) -> Path:
    """Write `state` (all U-Net parameters, e.g. gathered from ZeRO-3 partitions) as a diffusers
    U-Net folder: a fresh U-Net from `unet.config` holding exactly these weights, in safetensors."""
    from diffusers import UNet2DConditionModel

    fresh = UNet2DConditionModel.from_config(unet.config)
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    missing = [k for k in missing if k in dict(fresh.named_parameters())]
    if missing or unexpected:
        raise ValueError(f"U-Net state does not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
    fresh.save_pretrained(str(out_dir), safe_serialization=True)
    return Path(out_dir)


def trainable_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class LoraSwitch:
    """Turns a LoRA-adapted U-Net's adapter on and off (the 'base' side of a paired comparison)."""

    def __init__(self, unet: nn.Module):
        self.unet, self._enabled = unet, True

    @property
    def masks_enabled(self) -> bool:  # the name every tuned-weights switch shares (see pipeline.py)
        return self._enabled

    @masks_enabled.setter
    def masks_enabled(self, enabled: bool) -> None:
        (self.unet.enable_adapters if enabled else self.unet.disable_adapters)()
        self._enabled = bool(enabled)


class UNetSwitch(nn.Module):
    """A fine-tuned U-Net next to its base: forward runs the tuned one while enabled, else the base."""

    def __init__(self, tuned: nn.Module, base: nn.Module):
        super().__init__()
        self.tuned, self.base = tuned, base
        self.masks_enabled = True

    @property
    def config(self):
        return self.tuned.config

    @property
    def dtype(self) -> torch.dtype:
        return self.tuned.dtype

    @property
    def device(self) -> torch.device:
        return self.tuned.device

    def forward(self, *args, **kwargs):
        return (self.tuned if self.masks_enabled else self.base)(*args, **kwargs)
