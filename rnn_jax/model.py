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
import numpy as np

from rnn_jax.cells import initializers as inits
from rnn_jax.cells import lead
from rnn_jax.cells.validation import check_unroll, is_concrete, mask_from, zero_padding
from rnn_jax.loops.segments import check_remat
from rnn_jax.rnn import MERGES, METHODS
from rnn_jax.stack import _pair, init_stack, layer_cells, output_size, stack

READOUTS = ("all", "last", "flatten")


def _check_int(name, value, minimum, *, optional=False):
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"SequenceModel.{name}: expected an int{' or None' if optional else ''}, "
                        f"got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"SequenceModel.{name}: expected an int >= {minimum}, got {value}")


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
      unroll / remat / method: passed to the runner (``rnn_jax.rnn.rnn``); ``remat="segments"``
        trains long sequences in O(sqrt(T)) memory for about one extra forward pass.

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
    remat: bool | str | int = False
    method: str = "auto"

    def __post_init__(self):
        if isinstance(self.cell, list):
            object.__setattr__(self, "cell", tuple(self.cell))
        _check_int("num_layers", self.num_layers, 1, optional=True)
        if not isinstance(self.bidirectional, bool):
            raise TypeError(f"SequenceModel.bidirectional: expected a bool, got "
                            f"{type(self.bidirectional).__name__} {self.bidirectional!r}")
        check_remat(self.remat)
        cells = layer_cells(self.cell, self.num_layers)
        for entry in cells:
            for c in (_pair(entry) if self.bidirectional is True else (entry,)):
                if not (hasattr(c, "hidden_size") and callable(getattr(c, "step", None))
                        and callable(getattr(c, "init", None))):
                    raise TypeError(f"SequenceModel.cell: expected a cell (e.g. rj.GRU(64)) or a "
                                    f"tuple of cells, got {type(c).__name__} {c!r}")
        for name, choices in (("readout", READOUTS), ("merge", MERGES), ("method", METHODS)):
            value = getattr(self, name)
            if not isinstance(value, str) or value not in choices:
                raise ValueError(f"SequenceModel.{name}: expected one of {choices}, got {value!r}")
        _check_int("output_size", self.output_size, 1)
        for name in ("vocab_size", "embed_size", "input_projection", "seq_len"):
            _check_int(name, getattr(self, name), 1, optional=True)
        if self.readout == "flatten" and self.seq_len is None:
            raise ValueError('SequenceModel.seq_len: readout="flatten" needs seq_len (a positive '
                             'int), got None')
        if self.vocab_size is not None and self.input_projection is not None:
            raise ValueError("SequenceModel.input_projection: vocab_size (token inputs) and "
                             "input_projection are alternatives; set one")
        if self.embed_size is not None and self.vocab_size is None:
            raise ValueError(f"SequenceModel.embed_size={self.embed_size} needs vocab_size "
                             "(token inputs)")
        rate = self.dropout_rate
        if (isinstance(rate, bool) or not isinstance(rate, int | float | np.number)
                or not 0.0 <= rate < 1.0):
            raise ValueError(f"SequenceModel.dropout_rate: expected a float in [0, 1), got "
                             f"{rate!r}")
        try:
            check_unroll(self.unroll)
        except (TypeError, ValueError) as err:
            raise type(err)(f"SequenceModel.{err}") from None

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

    def check_params(self, params) -> None:
        """Raises ValueError/TypeError unless ``params`` has the layout ``init`` returns (the
        groups, and the readout's shape); each layer's own leaves are checked by the runner."""
        expected = {"layers", "readout"} | ({"embed"} if self.token_inputs else set()) | (
            {"proj"} if self.input_projection is not None else set())
        if not isinstance(params, dict) or set(params) != expected:
            got = sorted(params) if isinstance(params, dict) else type(params).__name__
            raise ValueError(f"params: expected a dict with keys {sorted(expected)} (from "
                             f"SequenceModel.init), got {got}")
        readout = params["readout"]
        if not isinstance(readout, dict) or set(readout) != {"V", "c"}:
            raise ValueError(f"params['readout']: expected a dict with keys ['V', 'c'], got "
                             f"{sorted(readout) if isinstance(readout, dict) else readout!r}")
        h_top = output_size(self.cells, bidirectional=self.bidirectional, merge=self.merge)
        want = (h_top * (self.seq_len if self.readout == "flatten" else 1), self.output_size)
        for leaf, shape in (("V", want), ("c", want[1:])):
            got = tuple(getattr(readout[leaf], "shape", ()))
            if got != shape:
                raise ValueError(f"params['readout']['{leaf}']: expected shape {shape} for "
                                 f"this SequenceModel, got {got}")
        layers = params["layers"]
        if not isinstance(layers, list | tuple) or len(layers) != len(self.cells):
            got = len(layers) if isinstance(layers, list | tuple) else type(layers).__name__
            raise ValueError(f"params['layers']: expected a list of {len(self.cells)} layers' "
                             f"params, got {got}")

    def initial_carries(self, batch_shape=(), *, key=None) -> list:
        """Zero carries for every layer (pairs for bidirectional layers).

        With ``key``, cells that draw noise per sequence (``rnn_jax.cells.regularizers``) get
        keyed carries (training mode); the others' carries are the same zeros.
        """
        keys = iter(jax.random.split(key, 2 * len(self.cells)) if key is not None else [])

        def carry(cell):
            k = next(keys, None)
            if k is not None and hasattr(cell, "initial_carry_keyed"):
                return cell.initial_carry_keyed(k, batch_shape)
            return cell.initial_carry(batch_shape)

        out = []
        for cell in self.cells:
            if self.bidirectional:
                c_f, c_b = _pair(cell)
                out.append((carry(c_f), carry(c_b)))
            else:
                out.append(carry(cell))
        return out

    def _noisy(self) -> bool:
        return any(hasattr(c, "initial_carry_keyed")
                   for cell in self.cells for c in _pair(cell))

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
          key / deterministic: dropout between layers (training: ``deterministic=False``), and
            the noise of regulariser cells (variational dropout, zoneout) when ``carries`` is
            None: drawn from ``key`` per sequence in training, deterministic otherwise.
          carries: initial carries (e.g. from the previous window in truncated BPTT).
          return_carries: also return every layer's final carry.
        """
        self.check_params(params)
        if not (hasattr(xs, "shape") and hasattr(xs, "dtype")):
            raise TypeError(f"xs: expected an array [*batch, T, I] (or token ids), got "
                            f"{type(xs).__name__}")
        for name, value in (("deterministic", deterministic), ("return_carries", return_carries)):
            if not isinstance(value, bool):
                raise TypeError(f"{name}: expected a bool, got {type(value).__name__} {value!r}")
        e = self.embed(params, self._zero_padding(xs, lengths, mask))  # validates xs first
        steps = e.shape[-2]
        if self.readout == "flatten" and steps != self.seq_len:
            raise ValueError(f"xs has T={steps} steps, but readout='flatten' was built for "
                             f"seq_len={self.seq_len}")
        if carries is None and key is not None and not deterministic and self._noisy():
            # a stream of its own, so the dropout between layers draws what it drew before
            carries = self.initial_carries(e.shape[:-2], key=jax.random.fold_in(key, 0x2E0))
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
