"""Regenerates tests/golden_reference.json: PyTorch nn.RNN/LSTM/GRU outputs and gradients.

    .venv/bin/python tests/make_golden.py        (needs torch; the file records its version)

Each case seeds torch, builds the module with PyTorch's default initialisation, draws inputs,
an initial state and fixed loss weights, and records the module's parameters, its outputs, its
final states and the gradient of the scalar loss

    L = sum(out * r_out) + sum(h_n * r_h) [+ sum(c_n * r_c) for the LSTM]

with respect to every parameter. ``tests/test_reference.py`` maps the parameters into rnn_jax's
layout and checks rnn_jax against these numbers (without torch), and against a live torch run
(with torch). Not collected by pytest (the name does not start with ``test_``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

PATH = Path(__file__).with_name("golden_reference.json")
SIZES = {"batch": 2, "steps": 5, "input_size": 3, "hidden_size": 4}

# name -> (cell, num_layers, bidirectional, lengths or None, activation); lengths go through
# pack_padded_sequence, so padded steps are skipped exactly as rnn_jax masks them.
CASES = {
    f"{cell}_{name}": (cell, layers, bi, lengths, "tanh")
    for cell in ("elman", "lstm", "gru")
    for name, layers, bi, lengths in (
        ("single", 1, False, None),
        ("deep", 2, False, (5, 2)),
        ("bi", 1, True, (3, 5)),
        ("deep_bi", 2, True, None),
    )
}
CASES["elman_relu_single"] = ("elman", 1, False, (4, 5), "relu")

MODULES = {"elman": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}


def torch_case(cell, num_layers, bidirectional, lengths, activation, seed):
    """Runs one torch module on seeded data; returns a dict of float32 arrays and settings."""
    torch.manual_seed(seed)
    b, t, i, h = (SIZES[k] for k in ("batch", "steps", "input_size", "hidden_size"))
    kw = {"nonlinearity": activation} if cell == "elman" else {}
    module = MODULES[cell](i, h, num_layers=num_layers, bidirectional=bidirectional,
                           batch_first=True, **kw)
    d = 2 if bidirectional else 1
    x = torch.randn(b, t, i)
    h0 = torch.randn(num_layers * d, b, h)
    c0 = torch.randn(num_layers * d, b, h)
    r_out = torch.randn(b, t, d * h)
    r_h = torch.randn(num_layers * d, b, h)
    r_c = torch.randn(num_layers * d, b, h)
    state = (h0, c0) if cell == "lstm" else h0
    if lengths is None:
        out, final = module(x, state)
    else:
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            x, torch.tensor(lengths), batch_first=True, enforce_sorted=False)
        out, final = module(packed, state)
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=t)
    h_n, c_n = final if cell == "lstm" else (final, None)
    loss = (out * r_out).sum() + (h_n * r_h).sum()
    if cell == "lstm":
        loss = loss + (c_n * r_c).sum()
    names = [n for n, _ in module.named_parameters()]
    grads = torch.autograd.grad(loss, list(module.parameters()))
    case = {
        "cell": cell, "num_layers": num_layers, "bidirectional": bidirectional,
        "lengths": None if lengths is None else list(lengths), "activation": activation,
        "seed": seed, "x": x, "h0": h0, "r_out": r_out, "r_h": r_h, "out": out, "h_n": h_n,
        "params": dict(module.named_parameters()), "grads": dict(zip(names, grads, strict=True)),
    }
    if cell == "lstm":
        case.update(c0=c0, r_c=r_c, c_n=c_n)
    return _to_numpy(case)


def _to_numpy(tree):
    if isinstance(tree, dict):
        return {k: _to_numpy(v) for k, v in tree.items()}
    if isinstance(tree, torch.Tensor):
        return tree.detach().numpy().astype(np.float32)
    return tree


def _to_json(tree):
    if isinstance(tree, dict):
        return {k: _to_json(v) for k, v in tree.items()}
    if isinstance(tree, np.ndarray):
        # str() of a float32 is its shortest round-tripping decimal: the file stays small and
        # reading it back gives the very same float32 values.
        flat = [float(str(v)) for v in tree.astype(np.float32).ravel()]
        return np.array(flat, dtype=object).reshape(tree.shape).tolist()
    return tree


def make_case(name):
    """The named case of ``CASES``, seeded by its position in ``CASES``."""
    return torch_case(*CASES[name], seed=list(CASES).index(name))


def main():
    cases = {name: make_case(name) for name in CASES}
    doc = {"torch_version": torch.__version__, "sizes": SIZES, "cases": _to_json(cases)}
    PATH.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    size = PATH.stat().st_size
    print(f"wrote {PATH} ({size} bytes, {len(cases)} cases, torch {torch.__version__})")


if __name__ == "__main__":
    main()
