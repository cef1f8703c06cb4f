"""The network: normalisation buffers -> recurrent core -> direct multi-step head.

Input per step: each channel's last observed value (engineering units, NaN if never seen), the
channel's slow running mean for this stream (``centre``: the value is fed as its deviation from it,
so a process that drifts to levels never trained on still looks familiar), and a mask of which
channels were observed in this frame. Output per step: the *change* from each target's last
observed value for steps 0..H (step 0 is the nowcast of a target that is not an input), in units of
that target's typical k-step change (``dscale``, the persistence error), so every target and step
weighs alike in training. The head's last layer starts at zero, so an untrained model is exactly
the persistence forecast.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from streamrnn import __version__
from streamrnn.atomic import write_bytes

FORMAT = 1
CLAMP = 10.0  # normalised inputs are clipped here, so one wild value cannot saturate the state
BOUND = 4.0  # predicted changes are bounded softly to this many typical changes


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the network; saved inside every model file."""

    kind: str
    channels: tuple[str, ...]
    targets: tuple[str, ...]
    horizon: int
    hidden_size: int = 64
    num_layers: int = 2
    nonlinearity: str = "tanh"
    dropout: float = 0.0
    bias: bool = True
    head_hidden: int = 64
    n_inputs: int = -1  # channels[:n_inputs] are inputs, the rest target-only; -1: all are inputs
    centre_halflife: float = 128.0  # steps: half-life of the running mean inputs are centred on
    target_index: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        missing = [t for t in self.targets if t not in self.channels]
        if missing:
            raise ValueError(f"targets {missing} are not among the model's channels")
        object.__setattr__(self, "channels", tuple(self.channels))
        object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "target_index", tuple(self.channels.index(t) for t in self.targets))
        if self.n_inputs < 0:
            object.__setattr__(self, "n_inputs", len(self.channels))

    @property
    def target_only(self) -> tuple[bool, ...]:
        """Per target: True if it is not an input (a rarely measured key variable)."""
        return tuple(i >= self.n_inputs for i in self.target_index)

    @classmethod
    def from_settings(cls, settings: Any) -> ModelSpec:
        m = settings.model
        return cls(
            kind=m.kind,
            channels=tuple(settings.channels),
            targets=tuple(settings.features.targets),
            horizon=settings.features.horizon,
            hidden_size=m.hidden_size,
            num_layers=m.num_layers,
            nonlinearity=m.nonlinearity,
            dropout=m.dropout,
            bias=m.bias,
            head_hidden=m.head_hidden,
            n_inputs=len(settings.features.inputs),
            centre_halflife=m.centre_halflife,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("target_index")
        d["channels"], d["targets"] = list(self.channels), list(self.targets)
        return d

    @property
    def centre_alpha(self) -> float:
        return 1.0 - 0.5 ** (1.0 / self.centre_halflife)

    @property
    def state_layers(self) -> int:
        """Tensors in the hidden state: 2 for an LSTM (h and c), else 1."""
        return 2 if self.kind == "lstm" else 1


class StreamRNN(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        c, t = len(spec.channels), len(spec.targets)
        rnn_cls = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[spec.kind]
        kwargs: dict[str, Any] = {"nonlinearity": spec.nonlinearity} if spec.kind == "rnn" else {}
        dropout = spec.dropout if spec.num_layers > 1 else 0.0
        self.rnn = rnn_cls(2 * c, spec.hidden_size, spec.num_layers, bias=spec.bias, batch_first=True, dropout=dropout, **kwargs)
        self.fc1 = nn.Linear(spec.hidden_size, spec.head_hidden)
        self.fc2 = nn.Linear(spec.head_hidden, (spec.horizon + 1) * t)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)
        self.register_buffer("mean", torch.zeros(c))  # input normalisation per channel
        self.register_buffer("std", torch.ones(c))
        self.register_buffer("dscale", torch.ones(spec.horizon + 1, t))  # output scale per step, target
        self._host_std: tuple = (None, -1, None)  # std on the host, for serve: (tensor, its version, copy)

    def init_hidden(self, batch: int) -> Tensor:
        """A blank state: (state_layers, num_layers, batch, hidden)."""
        s = self.spec
        return torch.zeros(s.state_layers, s.num_layers, batch, s.hidden_size, device=self.mean.device)

    def forward(self, held: Tensor, centre: Tensor, mask: Tensor, hidden: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """held, centre, mask: (B, T, C) -> changes/dscale (B, T, H+1, targets), hidden (state_layers, layers, B, hidden)."""
        out, new = self._recur(held, centre, mask, hidden)
        return self._head(out), new

    def advance(self, held: Tensor, centre: Tensor, mask: Tensor, hidden: Tensor | None = None) -> Tensor:
        """The state after the frames held, centre, mask (B, T, C), from ``hidden``: ``forward``
        without the outputs, for catching a state up over frames that need no forecast."""
        return self._recur(held, centre, mask, hidden)[1]

    def _recur(self, held: Tensor, centre: Tensor, mask: Tensor, hidden: Tensor | None) -> tuple[Tensor, Tensor]:
        x = self._inputs(held, centre, mask)  # (B, T, 2C)
        if hidden is None:
            hidden = self.init_hidden(held.shape[0])
        state = (hidden[0].contiguous(), hidden[1].contiguous()) if self.spec.kind == "lstm" else hidden[0]
        out, state = self.rnn(x, state)  # (B, T, hidden)
        return out, torch.stack(state) if self.spec.kind == "lstm" else state.unsqueeze(0)

    def step(self, held: Tensor, centre: Tensor, mask: Tensor, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """``forward`` over one frame: held, centre, mask (B, C) -> (B, H+1, targets), new hidden.

        The same weights through torch's one-step cell kernels: at a serving step's small batches the
        time goes to dispatch, and the cells and bare linear maps dispatch far less than the sequence
        module does (figures: CHANGELOG.md). Outputs match ``forward``'s."""
        y, new = self._cells(self._inputs(held, centre, mask), hidden)
        return self._bound(y), new

    def serve(self, held: np.ndarray, centre: np.ndarray, fresh: np.ndarray, hidden: Tensor) -> np.ndarray:
        """``step`` from and to the host, as the state bank calls it: the values held, their means and
        the mask (B, C) in numpy; ``hidden`` is stepped in place. Returns the bounded changes (B, H+1,
        targets), float32. The inputs are made and the outputs bounded in numpy: at serving's small
        batches a torch call costs more than the numbers it moves."""
        x = torch.from_numpy(self._host_inputs(held, centre, fresh)).to(hidden.device)
        with torch.inference_mode():
            y, new = self._cells(x, hidden)
            hidden.copy_(new)
            y = y.cpu().numpy()
        np.divide(y, BOUND, out=y)
        np.tanh(y, out=y)
        y *= BOUND
        return y.reshape(len(y), self.spec.horizon + 1, len(self.spec.targets))

    def _cells(self, x: Tensor, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """Inputs (B, 2C) through the cells and the head's linear maps: the head's output before its
        bound (B, (H+1) * targets), and the new hidden state."""
        cell, lstm = self._cell, self.spec.kind == "lstm"
        flat = self.rnn._flat_weights  # what nn.RNNBase hands its own kernel, per layer in order
        per = len(flat) // self.spec.num_layers
        hs, cs = [], []
        for layer in range(self.spec.num_layers):
            weights = flat[layer * per : (layer + 1) * per]
            if lstm:
                h, c = cell(x, (hidden[0, layer], hidden[1, layer]), *weights)
                cs.append(c)
            else:
                h = cell(x, hidden[0, layer], *weights)
            hs.append(h)
            x = h
        new = torch.stack([torch.stack(hs), torch.stack(cs)]) if lstm else torch.stack(hs).unsqueeze(0)
        return self._project(x), new

    def _inputs(self, held: Tensor, centre: Tensor, mask: Tensor) -> Tensor:
        """(..., C) x 3 -> (..., 2C): each channel's deviation from its centre in units of its std,
        clipped, 0 where never seen; then the mask."""
        dev = ((held - centre) / self.std).clamp(-CLAMP, CLAMP).nan_to_num(0.0)
        return torch.cat([dev, mask.to(dev.dtype)], dim=-1)

    def _host_inputs(self, held: np.ndarray, centre: np.ndarray, fresh: np.ndarray) -> np.ndarray:
        """``_inputs`` in numpy, in float32 as torch computes them, bit for bit: (B, C) x 3 -> (B, 2C)."""
        if self._host_std[0] is not self.std or self._host_std[1] != self.std._version:
            self._host_std = (self.std, self.std._version, self.std.cpu().numpy().copy())
        c = held.shape[1]
        x = np.empty((len(held), 2 * c), np.float32)
        dev = x[:, :c]
        np.subtract(held, centre, out=dev, dtype=np.float32, casting="same_kind")
        np.divide(dev, self._host_std[2], out=dev)
        np.minimum(dev, CLAMP, out=dev)
        np.maximum(dev, -CLAMP, out=dev)
        np.copyto(dev, 0.0, where=dev != dev)
        x[:, c:] = fresh
        return x

    def _head(self, out: Tensor) -> Tensor:
        """Recurrent outputs (..., hidden) -> bounded changes (..., H+1, targets)."""
        return self._bound(self._project(out))

    def _project(self, out: Tensor) -> Tensor:
        """The head's linear maps, called bare, without the submodules' dispatch."""
        return F.linear(torch.relu(F.linear(out, self.fc1.weight, self.fc1.bias)), self.fc2.weight, self.fc2.bias)

    def _bound(self, y: Tensor) -> Tensor:
        y = BOUND * torch.tanh(y / BOUND)  # exactly 0 at init: persistence
        return y.unflatten(-1, (self.spec.horizon + 1, len(self.spec.targets)))

    @property
    def _cell(self):
        s = self.spec
        if s.kind == "rnn":
            return torch.rnn_relu_cell if s.nonlinearity == "relu" else torch.rnn_tanh_cell
        return torch.lstm_cell if s.kind == "lstm" else torch.gru_cell

    @torch.no_grad()
    def set_normalisation(self, mean: Tensor, std: Tensor, dscale: Tensor) -> None:
        self.mean.copy_(mean)
        self.std.copy_(std)
        self.dscale.copy_(dscale)


def build(spec: ModelSpec, seed: int | None = None) -> StreamRNN:
    """A fresh, untrained model (the persistence forecast until it learns)."""
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return StreamRNN(spec).eval()
    return StreamRNN(spec).eval()


def to_bytes(model: StreamRNN, version: int) -> bytes:
    """The self-contained model file: spec, weights, normalisation and version; no pickled objects."""
    payload = {
        "format": FORMAT,
        "streamrnn": __version__,
        "version": int(version),
        "spec": model.spec.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def save(path: str | Path, model: StreamRNN, version: int) -> None:
    write_bytes(path, to_bytes(model, version))


def load(path: str | Path | io.BytesIO, device: str | torch.device = "cpu") -> tuple[StreamRNN, int]:
    """Load a model file with ``weights_only=True``; return (model in eval mode, version)."""
    payload = torch.load(path, map_location=device, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a streamrnn model file of format {FORMAT}")
    model = StreamRNN(ModelSpec(**payload["spec"])).to(device)
    model.load_state_dict(payload["state_dict"])
    return model.eval(), int(payload["version"])


def resolve_device(name: str) -> torch.device:
    """``auto`` takes CUDA where it is present; ``cuda`` without CUDA is an error, not a silent fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device = 'cuda' but torch sees no CUDA device (set device = 'auto' or 'cpu')")
    return torch.device(name)
