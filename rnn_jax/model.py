"""Sequence models: inputs -> (embedding | input projection) -> recurrent layers -> readout.

The seed's model, end to end (Elman 1990; a readout at every step or at the last real step):

    e_t = E[x_t]  (tokens)   or   e_t = x_t P + p  (optional projection)   or   e_t = x_t
    h_t = stacked recurrent layers over e_1..e_T   (uni- or bidirectional, see rnn_jax.stack)
    logits_t = h_t V + c                            readout="all":  [*batch, T, O]
    logits   = h_last V + c                         readout="last": [*batch, O]
    logits   = [h_1; ...; h_T] V + c                readout="flatten": [*batch, O]

``readout="flatten"`` reads all T outputs at once (V: [T*H_top, O]; needs ``seq_len``), the
MNIST-1D authors' recurrent baselines (Greydanus 2020).

For ``readout="last"`` h_last is the top layer's final hidden state, i.e. the state after each
sequence's last real step (respecting lengths/mask); a bidirectional model concatenates the
forward final state with the backward final state (which has read the whole sequence).
The softmax itself lives in the losses (``rnn_jax.losses``), which take logits.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from rnn_jax.cells import initializers as inits
from rnn_jax.cells import lead
from rnn_jax.cells.validation import is_concrete, mask_from, zero_padding
from rnn_jax.rnn import MERGES
from rnn_jax.stack import _pair, init_stack, layer_cells, output_size, stack

READOUTS = ("all", "last", "flatten")


@dataclasses.dataclass(frozen=True)
class SequenceModel:
    """A recurrent sequence model as a value; ``init`` and ``apply`` are pure.

    Fields:
      cell: a cell, or a tuple of cells (one per layer).
      output_size: O, the readout width (classes, or regression targets).
      num_layers: layers when ``cell`` is a single cell (default 1).
      bidirectional / merge: bidirectional layers and how directions merge.
      vocab_size / embed_size: token inputs through an embedding table ``E: [vocab, embed]``.
      input_projection: if set, float inputs first go through a dense layer to this width.
      readout: ``"all"`` (logits at every step), ``"last"`` (at the last real step) or
        ``"flatten"`` (one readout of all T outputs concatenated; needs ``seq_len``).
      seq_len: T, required by ``readout="flatten"`` only.
      dropout_rate: dropout between recurrent layers (training only).
      unroll / remat / method: passed to the runner (``rnn_jax.rnn.rnn``).

    Params: ``{"embed": {"E"}}`` or ``{"proj": {"P", "p"}}`` (if used), ``"layers"`` (list, see
    ``rnn_jax.stack``), ``"readout": {"V": [H_top, O], "c": [O]}``.
    """

    cell: Any
    output_size: int
    num_layers: int | None = None
    bidirectional: bool = False
    merge: str = "concat"
    vocab_size: int | None = None
    embed_size: int | None = None
    input_projection: int | None = None
    readout: str = "all"
    seq_len: int | None = None
    dropout_rate: float = 0.0
    unroll: int = 1
    remat: bool = False
    method: str = "auto"

    def __post_init__(self):
        if isinstance(self.cell, list):
            object.__setattr__(self, "cell", tuple(self.cell))
        layer_cells(self.cell, self.num_layers)  # validates num_layers
        if self.readout not in READOUTS:
            raise ValueError(
                f"readout={self.readout!r} is not supported; expected one of {READOUTS}")
        if self.readout == "flatten" and not (isinstance(self.seq_len, int) and self.seq_len > 0):
            raise ValueError(
                f'readout="flatten" needs seq_len (a positive int), got {self.seq_len!r}')
        if self.merge not in MERGES:
            raise ValueError(f"merge={self.merge!r} is not supported; expected one of {MERGES}")
        if not isinstance(self.output_size, int) or self.output_size < 1:
            raise ValueError(f"output_size must be a positive int, got {self.output_size!r}")
        if self.vocab_size is not None and self.input_projection is not None:
            raise ValueError("vocab_size (token inputs) and input_projection are alternatives")

    @property
    def cells(self) -> tuple:
        return layer_cells(self.cell, self.num_layers)

    @property
    def token_inputs(self) -> bool:
        return self.vocab_size is not None

    def _rnn_input_size(self, input_size):
        if self.token_inputs:
            return self.embed_size or _pair(self.cells[0])[0].hidden_size
        if input_size is None:
            raise ValueError("input_size is required for a model without an embedding")
        return self.input_projection or input_size

    def init(self, key, input_size: int | None = None) -> dict:
        """Fresh parameters; ``input_size`` = I for float inputs (ignored for token inputs)."""
        k_in, k_rnn, k_out = jax.random.split(key, 3)
        params = {}
        size = self._rnn_input_size(input_size)
        if self.token_inputs:
            params["embed"] = {"E": jax.random.normal(k_in, (self.vocab_size, size)) / size**0.5}
        elif self.input_projection is not None:
            params["proj"] = {
                "P": inits.glorot_uniform(k_in, (input_size, size)),
                "p": jnp.zeros((size,)),
            }
        params["layers"] = init_stack(k_rnn, self.cells, size, bidirectional=self.bidirectional,
                                      merge=self.merge)
        h_top = output_size(self.cells, bidirectional=self.bidirectional, merge=self.merge)
        if self.readout == "flatten":
            h_top *= self.seq_len
        params["readout"] = {
            "V": inits.glorot_uniform(k_out, (h_top, self.output_size)),
            "c": jnp.zeros((self.output_size,)),
        }
        return params

    def initial_carries(self, batch_shape=()) -> list:
        """Zero carries for every layer (pairs for bidirectional layers)."""
        out = []
        for cell in self.cells:
            if self.bidirectional:
                c_f, c_b = _pair(cell)
                out.append((c_f.initial_carry(batch_shape), c_b.initial_carry(batch_shape)))
            else:
                out.append(cell.initial_carry(batch_shape))
        return out

    def embed(self, params, xs):
        """The recurrent layers' input sequence e_1..e_T (see the module docstring)."""
        if self.token_inputs:
            if not jnp.issubdtype(xs.dtype, jnp.integer):
                raise TypeError(f"xs must be integer token ids for a token model, got {xs.dtype}")
            vocab = params["embed"]["E"].shape[0]
            if is_concrete(xs) and xs.size and (int(xs.min()) < 0 or int(xs.max()) >= vocab):
                raise ValueError(f"xs holds token ids in [{int(xs.min())}, {int(xs.max())}], "
                                 f"outside the vocabulary [0, {vocab})")
            return jnp.take(params["embed"]["E"], xs, axis=0)
        if xs.ndim < 2:
            raise ValueError(f"xs must have rank >= 2 ([*batch, T, I]), got shape {xs.shape}")
        if not jnp.issubdtype(xs.dtype, jnp.floating):
            raise TypeError(f"xs must be floating point, got dtype {xs.dtype}")
        if "proj" in params:
            if xs.shape[-1] != params["proj"]["P"].shape[0]:
                raise ValueError(
                    f"xs has {xs.shape[-1]} input features (shape {xs.shape}), but the input "
                    f"projection expects input_size={params['proj']['P'].shape[0]}"
                )
            e = xs @ params["proj"]["P"]
            return e + lead(params["proj"]["p"], e.ndim)
        return xs

    def _zero_padding(self, xs, lengths, mask):
        """xs with its masked steps zeroed before the input projection or embedding reads them
        (a NaN there would reach the projection's gradient through ``x^T dL/de``)."""
        steps_axis = xs.ndim - (1 if self.token_inputs else 2) if hasattr(xs, "ndim") else -1
        if (lengths is None and mask is None) or steps_axis < 0:
            return xs  # nothing masked, or a rank the checks below reject
        m = mask_from(lengths, mask, tuple(xs.shape[:steps_axis]), xs.shape[steps_axis])
        return zero_padding(xs[..., None], m)[..., 0] if self.token_inputs else zero_padding(xs, m)

    def apply(self, params, xs, *, lengths=None, mask=None, key=None, deterministic=True,
              carries=None, return_carries=False):
        """Logits ``[*batch, T, O]`` (readout "all") or ``[*batch, O]`` ("last", "flatten").

        Args:
          xs: ``[*batch, T, I]`` floats, or ``[*batch, T]`` token ids for a token model.
          lengths / mask: which steps are real (see ``rnn_jax.rnn``).
          key / deterministic: dropout between layers (training: ``deterministic=False``).
          carries: initial carries (e.g. from the previous window in truncated BPTT).
          return_carries: also return every layer's final carry.
        """
        e = self.embed(params, self._zero_padding(xs, lengths, mask))  # validates xs first
        steps = e.shape[-2]
        if self.readout == "flatten" and steps != self.seq_len:
            raise ValueError(f"xs has T={steps} steps, but readout='flatten' was built for "
                             f"seq_len={self.seq_len}")
        hs, finals = stack(self.cells, params["layers"], e, carries, lengths=lengths, mask=mask,
                           bidirectional=self.bidirectional, merge=self.merge,
                           dropout_rate=self.dropout_rate, key=key, deterministic=deterministic,
                           unroll=self.unroll, remat=self.remat, method=self.method)
        if self.readout == "all":
            feats = hs
        elif self.readout == "flatten":
            feats = hs.reshape(*hs.shape[:-2], hs.shape[-2] * hs.shape[-1])
        else:
            top_cell, top = self.cells[-1], finals[-1]
            if self.bidirectional:
                c_f, c_b = _pair(top_cell)
                h_f, h_b = c_f.hidden(top[0]), c_b.hidden(top[1])
                feats = (jnp.concatenate([h_f, h_b], -1) if self.merge == "concat"
                         else (h_f + h_b) * (0.5 if self.merge == "mean" else 1.0))
            else:
                feats = top_cell.hidden(top)
        logits = feats @ params["readout"]["V"]
        logits = logits + lead(params["readout"]["c"], logits.ndim)
        return (logits, finals) if return_carries else logits
