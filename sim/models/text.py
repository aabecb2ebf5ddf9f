"""Character-level next-character prediction, as in LEAF's Shakespeare: embedding, 2-layer LSTM or GRU.

The recurrent cells are written out with ``nn.Linear`` layers and a loop over time steps instead of
``nn.LSTM`` / ``nn.GRU``: torch has no ``vmap`` batching rule for its fused LSTM kernel (it falls
back to a slow per-client loop with a warning), while the cells below are plain matrix products
that ``vmap`` batches over clients, with the same gradients as training each client alone.
The gate equations are those of ``nn.LSTM`` / ``nn.GRU`` (one bias per gate for the LSTM, since
torch's second bias only adds to the first), initialised as torch does: uniform in ``±1/sqrt(hidden)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sim.data.inputs import InputSpec
from sim.errors import ConfigError
from sim.validation import choice, integer

CELLS = ("lstm", "gru")


class LSTMLayer(nn.Module):
    def __init__(self, input_size: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.ih = nn.Linear(input_size, 4 * hidden)  # gates i, f, g, o from the input (and their bias)
        self.hh = nn.Linear(hidden, 4 * hidden, bias=False)  # ... and from the previous hidden state
        _uniform_init(self, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, I]`` -> every step's hidden state ``[B, T, H]``."""
        # all time steps in one product; unbind, not [:, t]: the gradient of T selections would
        # allocate and add T full-size zero tensors (quadratic in T), unbind's stacks them once
        steps = self.ih(x).unbind(1)
        h = steps[0].new_zeros(x.shape[0], self.hidden)
        c = h
        outputs = []
        for from_input in steps:
            i, f, g, o = (from_input + self.hh(h)).chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outputs.append(h)
        return torch.stack(outputs, dim=1)


class GRULayer(nn.Module):
    def __init__(self, input_size: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.ih = nn.Linear(input_size, 3 * hidden)  # gates r, z, n from the input
        self.hh = nn.Linear(hidden, 3 * hidden)  # its own bias: n's is scaled by the reset gate
        _uniform_init(self, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = self.ih(x).unbind(1)  # see LSTMLayer.forward
        h = steps[0].new_zeros(x.shape[0], self.hidden)
        outputs = []
        for from_input in steps:
            xr, xz, xn = from_input.chunk(3, dim=-1)
            hr, hz, hn = self.hh(h).chunk(3, dim=-1)
            r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
            n = torch.tanh(xn + r * hn)
            h = (1 - z) * n + z * h
            outputs.append(h)
        return torch.stack(outputs, dim=1)


def _uniform_init(layer: nn.Module, hidden: int) -> None:
    bound = 1.0 / math.sqrt(hidden)
    for p in layer.parameters():
        nn.init.uniform_(p, -bound, bound)


class CharRNN(nn.Module):
    """Token ids ``[B, T]`` -> logits ``[B, classes]`` for the character after the last one."""

    def __init__(self, vocab_size: int, num_classes: int, embed_dim: int, hidden: int, layers: int, cell: str):
        super().__init__()
        layer_type = LSTMLayer if cell == "lstm" else GRULayer
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.rnn = nn.ModuleList(layer_type(embed_dim if k == 0 else hidden, hidden) for k in range(layers))
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.embed(x)
        for layer in self.rnn:
            out = layer(out)
        return self.head(out[:, -1])


def validate_charlstm(model_cfg) -> None:
    integer("model.embed_dim", model_cfg.get("embed_dim"), 1)
    integer("model.hidden", model_cfg.get("hidden"), 1, allowed="a positive integer (the recurrent state size)")
    integer("model.layers", model_cfg.get("layers"), 1)
    choice("model.cell", model_cfg.get("cell"), CELLS)


def build_charlstm(model_cfg, spec: InputSpec, num_classes: int) -> nn.Module:
    if spec.kind != "tokens" or spec.vocab_size is None or len(spec.shape) != 1:
        raise ConfigError(
            "model.name",
            "charlstm",
            "a model for real-valued or image inputs (logreg, mlp, cnn, lenet, resnet)",
            f"charlstm reads sequences of token ids with a known vocabulary; this dataset's examples are "
            f"{spec.kind} values of shape {tuple(spec.shape)}.",
        )
    return CharRNN(
        int(spec.vocab_size),
        num_classes,
        int(model_cfg["embed_dim"]),
        int(model_cfg["hidden"]),
        int(model_cfg["layers"]),
        str(model_cfg["cell"]),
    )
