"""Tasks: synthetic long-range problems and real data sets, each sampled from a key.

Every task follows one protocol (see ``protocol.py``): ``input_size``, ``output_size``,
``readout`` ("last" | "all"), ``kind`` ("regression" | "classification"), ``token_inputs``,
``seq_len``, ``sample(key, batch_size) -> {"xs", "ys", "mask"}`` (pure, jit/vmap-able),
``loss(outputs, batch)``, ``metrics(outputs, batch)`` and the chance-level loss ``baseline``.
Data-set tasks add ``split(name)``. ``array_task`` makes a task of your own padded sequences.

``fixed_length`` is True for the tasks whose every sequence has all ``seq_len`` steps (adding
without ``min_len``, copy memory, temporal order, MNIST-1D, digits, Shakespeare): training leaves
their own all-True masks out of the runner, and refuses a batch whose mask has a False step
(ValueError naming ``mask``). ``ArrayTask`` is never fixed-length.

``get_task(name, **kwargs)`` builds a task by name; ``task_names()`` lists the names.
"""

from types import MappingProxyType

from .adding import Adding
from .arrays import ArrayTask, array_task
from .copy_memory import CopyMemory
from .datasets import SequenceDataset, digits_task, mnist1d_task, sequence_dataset
from .protocol import validate_batch_size, validate_key
from .shakespeare import load_shakespeare, shakespeare_task, shakespeare_works
from .streams import streams, windows
from .temporal_order import TemporalOrder
from .text import CharLM, char_lm_task, char_vocab

__all__ = [
    "Adding",
    "ArrayTask",
    "array_task",
    "CopyMemory",
    "TemporalOrder",
    "SequenceDataset",
    "sequence_dataset",
    "mnist1d_task",
    "digits_task",
    "CharLM",
    "char_lm_task",
    "char_vocab",
    "load_shakespeare",
    "shakespeare_task",
    "shakespeare_works",
    "streams",
    "windows",
    "validate_key",
    "validate_batch_size",
    "get_task",
    "task_names",
]

# Read-only: the registry is a constant, not state.
_REGISTRY = MappingProxyType(
    {
        "adding": Adding,
        "arrays": array_task,
        "copy_memory": CopyMemory,
        "temporal_order": TemporalOrder,
        "mnist1d": mnist1d_task,
        "digits": digits_task,
        "shakespeare": shakespeare_task,
    }
)


def task_names() -> tuple[str, ...]:
    """The names :func:`get_task` accepts, sorted."""
    return tuple(sorted(_REGISTRY))


def get_task(name: str, **kwargs):
    """Build the task registered as ``name`` with keyword arguments ``kwargs``.

    Names: "adding" (:class:`Adding`), "copy_memory" (:class:`CopyMemory`), "temporal_order"
    (:class:`TemporalOrder`), "mnist1d" (:func:`mnist1d_task`), "digits" (:func:`digits_task`),
    "shakespeare" (:func:`shakespeare_task`), "arrays" (:func:`array_task`: your own padded
    sequences, ``get_task("arrays", xs=xs, ys=ys, lengths=lengths)``). E.g.
    ``get_task("adding", seq_len=200, variant="mean")``.
    """
    if not isinstance(name, str):
        raise TypeError(f"name: expected a task name str, got {type(name).__name__}")
    key = name.strip().lower().replace("-", "_")
    if key not in _REGISTRY:
        raise ValueError(f"name: expected one of {task_names()}, got {name!r}")
    return _REGISTRY[key](**kwargs)
