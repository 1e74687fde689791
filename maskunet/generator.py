"""The mask generator: per up-block code networks and per-layer adapters (METHOD.md).

For up-block k with input channels C_in, output channels C_out and reduction f:
    z' = GAP(concat(h, s)) + W_t temb [+ W_c mean(c)]        (B, C_in)
    M  = MLP(z')  reshaped to (O', I') = (C_out/f, C_in/f)   per sample
and for each masked layer l of that block (weight viewed as out x fan_in):
    L  = A_out M A_in^T + b_out 1^T + 1 b_in^T               mask logits (B, out, fan_in)
Initialisation: logits ~= logit_bias (masks all ones) with every factor non-zero, so each
parameter gets a gradient at step 0.

`text=True` (an extension, off in the paper's generator) adds W_c mean(c), c the text encoder's
states the U-Net cross-attends to: the paper's generator sees the prompt only through h, which
the encoder's cross-attention already mixed, so an identifier token ("sks") can change the
masks only weakly (subject-driven masks, issue 30).
"""
from dataclasses import asdict, dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from maskunet.layers import select_layers, weight_matrix_shape


@dataclass
class MaskConfig:
    layers: str = "attn"  # attn | linear | attn+conv | comma-separated regexes
    reduction: int = 4
    hidden: int = 64
    logit_bias: float = 5.0
    tau: float = 1.0
    threshold: float = 0.5
    code_init_std: float = 0.1  # scale of the initial per-sample logit perturbation
    text: bool = False  # condition each block's code on the mean text-encoder state too


def _module_key(layer_name: str) -> str:
    return layer_name.replace(".", "__")  # ModuleDict keys cannot contain dots


class LayerAdapter(nn.Module):
    """Expands a block's low-resolution code (B, O', I') to one layer's logits (B, out, fan_in)."""

    def __init__(self, out_features: int, fan_in: int, code_out: int, code_in: int, logit_bias: float):
        super().__init__()
        self.a_out = nn.Parameter(torch.randn(out_features, code_out) / code_out**0.5)
        self.a_in = nn.Parameter(torch.randn(fan_in, code_in) / code_in**0.5)
        self.b_out = nn.Parameter(torch.full((out_features,), float(logit_bias)))
        self.b_in = nn.Parameter(torch.zeros(fan_in))

    def forward(self, code: torch.Tensor, compute_dtype: torch.dtype | None = None) -> torch.Tensor:
        """fp32 logits. The low-rank expansion may run in `compute_dtype` (the base's precision):
        its terms are small, so bf16 costs ~0.4% of them, while the logit-scale sum (the +5
        bias, whose small updates bf16 could not represent) and all that follows stay fp32."""
        return expand_code(self.a_out, self.a_in, self.b_out, self.b_in, code, compute_dtype)

    @staticmethod
    def stacked(adapters: list["LayerAdapter"], code: torch.Tensor, compute_dtype: torch.dtype | None = None
                ) -> torch.Tensor:
        """(L, B, out, fan_in) fp32 logits of L same-shape adapters in one batched expansion."""
        params = [torch.stack([getattr(a, n) for a in adapters]) for n in ("a_out", "a_in", "b_out", "b_in")]
        return expand_code(*params, code, compute_dtype)


def _cheaper_left_first(out_f: int, fan_in: int, code_out: int, code_in: int) -> bool:
    """(A_out M) A_in^T costs out*I'*(O'+fan_in) multiply-adds, A_out (M A_in^T) fan_in*O'*(I'+out)."""
    return out_f * code_in * (code_out + fan_in) <= fan_in * code_out * (code_in + out_f)


def expand_code(a_out: torch.Tensor, a_in: torch.Tensor, b_out: torch.Tensor, b_in: torch.Tensor,
                code: torch.Tensor, compute_dtype: torch.dtype | None) -> torch.Tensor:
    """A_out M A_in^T + b_out 1^T + 1 b_in^T for code M (B, O', I'): (B, out, fan_in), or
    (L, B, out, fan_in) when the factors carry a leading layer dimension L."""
    (out_f, code_out), (fan_in, code_in) = a_out.shape[-2:], a_in.shape[-2:]
    dtype = compute_dtype or a_out.dtype
    a_out, a_in, code = a_out.to(dtype), a_in.to(dtype), code.to(dtype)
    left_first = _cheaper_left_first(out_f, fan_in, code_out, code_in)
    if a_out.dim() == 2:  # torch.matmul folds the batch into one GEMM per product
        expanded = (a_out @ code) @ a_in.T if left_first else a_out @ (code @ a_in.T)
    else:
        expanded = _expand_stacked(a_out, a_in, code, left_first)
        b_out, b_in = b_out[:, None], b_in[:, None]  # (L, 1, ...): broadcast over the batch
    # In place: matmul saves its inputs, not its output, so no further full-size temporaries.
    return expanded.float().add_(b_out.float()[..., :, None]).add_(b_in.float()[..., None, :])


def _expand_stacked(a_out: torch.Tensor, a_in: torch.Tensor, code: torch.Tensor, left_first: bool) -> torch.Tensor:
    """(L, B, out, fan_in) = A_out,l M_b A_in,l^T with the batch folded into each GEMM (as
    torch.matmul does for one layer): each factor's gradient is then one accumulation over
    the batch, not a sum of per-sample products rounded in a low-precision dtype."""
    layers, (batch, code_out, code_in) = a_out.shape[0], code.shape
    out_f, fan_in = a_out.shape[1], a_in.shape[1]
    a_in_t = a_in.transpose(1, 2)  # (L, I', fan_in)
    if left_first:
        left = a_out @ code.transpose(0, 1).reshape(code_out, batch * code_in)  # (L, out, B*I')
        left = left.view(layers, out_f, batch, code_in).transpose(1, 2).reshape(layers, batch * out_f, code_in)
        return (left @ a_in_t).view(layers, batch, out_f, fan_in)
    right = code.reshape(batch * code_out, code_in) @ a_in_t  # (L, B*O', fan_in)
    right = right.view(layers, batch, code_out, fan_in).transpose(1, 2).reshape(layers, code_out, batch * fan_in)
    return (a_out @ right).view(layers, out_f, batch, fan_in).transpose(1, 2).contiguous()


class BlockCodeGenerator(nn.Module):
    """z' = GAP(concat(h, s)) + W_t temb [+ W_c mean(c)], then a two-layer MLP to the (O', I') code."""

    def __init__(self, in_channels: int, out_channels: int, temb_dim: int, cfg: MaskConfig, text_dim: int = 0):
        super().__init__()
        self.code_shape = (max(1, out_channels // cfg.reduction), max(1, in_channels // cfg.reduction))
        self.time_proj = nn.Linear(temb_dim, in_channels)
        self.text_proj = nn.Linear(text_dim, in_channels) if text_dim else None
        self.mlp = nn.Sequential(
            nn.Linear(in_channels, cfg.hidden),
            nn.ReLU(),
            nn.Linear(cfg.hidden, self.code_shape[0] * self.code_shape[1]),
        )
        # Small but non-zero output layer: codes start near 0 (masks all ones) yet carry gradient.
        nn.init.normal_(self.mlp[2].weight, std=cfg.code_init_std / cfg.hidden**0.5)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, hidden: torch.Tensor, skip: torch.Tensor, temb: torch.Tensor,
                text: torch.Tensor | None = None) -> torch.Tensor:
        dtype = self.time_proj.weight.dtype
        pooled = torch.cat([hidden.mean(dim=(2, 3)), skip.mean(dim=(2, 3))], dim=1).to(dtype)
        z = pooled + self.time_proj(temb.to(dtype))
        if self.text_proj is not None:
            if text is None:
                raise ValueError("this mask generator is text-conditioned: the U-Net call needs encoder_hidden_states")
            z = z + self.text_proj(text.mean(dim=1).to(dtype))
        return self.mlp(z).view(-1, *self.code_shape)


def describe_unet(unet: nn.Module, cfg: MaskConfig) -> list[dict]:
    """Per up-block shapes and masked layers of `unet`: what a generator must fit."""
    blocks = []
    for index, layers in select_layers(unet, cfg.layers).items():
        first_resnet = unet.up_blocks[index].resnets[0]
        blocks.append(
            {
                "index": index,
                "in_channels": first_resnet.conv1.in_channels,
                "out_channels": first_resnet.conv1.out_channels,
                "temb_dim": first_resnet.time_emb_proj.in_features,
                "layers": [[name, *weight_matrix_shape(module)] for name, module in layers],
            }
        )
        if cfg.text:  # only then: older exports keep describing their U-Net exactly
            blocks[-1]["text_dim"] = unet.config.cross_attention_dim
    return blocks


class MaskGenerator(ModelMixin, ConfigMixin):
    """All trainable MaskUNet parameters; saves/loads diffusers-style (config.json + safetensors)."""

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        blocks: list,
        layers: str = "attn",
        reduction: int = 4,
        hidden: int = 64,
        logit_bias: float = 5.0,
        tau: float = 1.0,
        threshold: float = 0.5,
        code_init_std: float = 0.1,
        text: bool = False,
    ):
        super().__init__()
        cfg = self.mask_config
        self.codes = nn.ModuleDict()
        self.adapters = nn.ModuleDict()
        for block in blocks:
            code = BlockCodeGenerator(block["in_channels"], block["out_channels"], block["temb_dim"], cfg,
                                      block.get("text_dim", 0))
            self.codes[str(block["index"])] = code
            for name, out_features, fan_in in block["layers"]:
                self.adapters[_module_key(name)] = LayerAdapter(out_features, fan_in, *code.code_shape, logit_bias)

    @property
    def mask_config(self) -> MaskConfig:
        return MaskConfig(**{k: self.config[k] for k in MaskConfig.__dataclass_fields__})

    @classmethod
    def from_unet(cls, unet: nn.Module, mask_config: MaskConfig | None = None) -> "MaskGenerator":
        cfg = mask_config or MaskConfig()
        return cls(blocks=describe_unet(unet, cfg), **asdict(cfg))

    def layer_names(self, block_index: int | None = None) -> list[str]:
        return [
            name
            for block in self.config.blocks
            if block_index is None or block["index"] == block_index
            for name, _, _ in block["layers"]
        ]

    def check_fits(self, unet: nn.Module) -> None:
        """Raise a ValueError naming the first difference if this generator was built for another U-Net."""
        expected = [dict(b, layers=[list(l) for l in b["layers"]]) for b in self.config.blocks]
        try:
            actual = describe_unet(unet, self.mask_config)
        except ValueError as e:
            raise ValueError(f"mask generator does not fit this U-Net: {e}") from None
        for want, have in zip(expected, actual):
            if want != have:
                diff = next(k for k in want if want[k] != have.get(k))
                raise ValueError(
                    f"mask generator does not fit this U-Net: up_blocks.{want['index']} {diff} is "
                    f"{str(have.get(diff))[:200]} in the U-Net but {str(want[diff])[:200]} in the generator"
                )
        if len(expected) != len(actual):
            raise ValueError(
                f"mask generator does not fit this U-Net: it masks up-blocks "
                f"{[b['index'] for b in expected]}, the U-Net has masked layers in {[b['index'] for b in actual]}"
            )

    def block_code(self, block_index: int, hidden: torch.Tensor, skip: torch.Tensor,
                   temb: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        """The low-resolution mask code (B, O', I') of one up-block; `text`: the U-Net's
        encoder_hidden_states (B, tokens, D), used by a text-conditioned generator."""
        return self.codes[str(block_index)](hidden, skip, temb, text)

    def layer_logits(self, layer_name: str, code: torch.Tensor, compute_dtype: torch.dtype | None = None
                     ) -> torch.Tensor:
        """fp32 mask logits (B, out, fan_in) of one masked layer from its block's code."""
        return self.adapters[_module_key(layer_name)](code, compute_dtype)

    def group_logits(self, layer_names: list[str], code: torch.Tensor, compute_dtype: torch.dtype | None = None
                     ) -> torch.Tensor:
        """fp32 mask logits (L, B, out, fan_in) of L same-shape layers of one block, batched."""
        return LayerAdapter.stacked([self.adapters[_module_key(n)] for n in layer_names], code, compute_dtype)
