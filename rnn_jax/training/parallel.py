"""Data-parallel training over all devices: batch sharded on its batch axis, state replicated.

With D devices on a one-axis mesh ``("data",)``, a global batch of B examples is split into D
shards of B/D along axis 0; parameters and optimizer state are replicated. The step is the same
function as on one device, ``jax.jit``-compiled with ``NamedSharding`` placements, so XLA
partitions it (GSPMD): every device runs the forward and backward pass on its shard and the
gradient is all-reduced before clipping and the update. Because the global loss (a masked mean
over the whole batch) is partitioned rather than rewritten as a mean of per-device means, the
result is the single-device step up to the order of floating-point sums, for any mask.

    g = dL(theta; batch)/dtheta = all_reduce_d( dL_d/dtheta )   (what XLA inserts)
    theta <- theta + optimizer(clip(g))                          (identical on every device)

Multi-host (several machines or processes, e.g. a TPU pod slice or several GPU hosts): run the
same script once per process; each calls ``jax.distributed.initialize`` before any other JAX
call and then builds the mesh over ``jax.devices()`` (all processes' devices). With two hosts,
the first at 10.0.0.1::

    host 0$ python -c "import jax; jax.distributed.initialize(coordinator_address='10.0.0.1:1234',
                       num_processes=2, process_id=0); import run; run.main()"
    host 1$ python -c "import jax; jax.distributed.initialize(coordinator_address='10.0.0.1:1234',
                       num_processes=2, process_id=1); import run; run.main()"

where ``run.main`` calls e.g. ``loop.fit(key, model, task, opt_cfg, cfg, mesh=data_mesh())``
(on Cloud TPU, SLURM or Open MPI, ``jax.distributed.initialize()`` with no arguments finds these
values; CPU processes also need ``jax.config.update("jax_cpu_collectives_implementation",
"gloo")``). Every process runs the same program with the same key: batches are drawn inside the
compiled step from ``fold_in(data_key, step)``, so there is no input pipeline to split by hand,
and each device trains on its shard. The replicated state is whole on every process, so
process 0 alone writes checkpoints and logs (``loop.fit`` does so) and every process restores;
this needs ``rnn_jax.training.checkpoint`` to open orbax with process-local
``MultiprocessingOptions`` (otherwise orbax waits for every process at each save). Tested on
one machine with two CPU
processes of two devices each: ``parallel_train`` and ``loop.fit`` (with that option) reproduce
the single-device losses to 1e-7. Single-host multi-device runs are
tested on 8 simulated CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=8``, set
before JAX is imported).
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from rnn_jax.training import train

AXIS = "data"


def data_mesh(devices=None) -> Mesh:
    """A one-axis mesh ``("data",)`` over ``devices`` (default: all of ``jax.devices()``).

    The axis type is Auto, so ``jit`` partitions the computation from the input shardings.
    """
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("devices: expected at least one device, got an empty list")
    return Mesh(np.asarray(devices), (AXIS,), axis_types=(AxisType.Auto,))


def _check_mesh(mesh) -> None:
    if not isinstance(mesh, Mesh) or AXIS not in mesh.axis_names:
        raise TypeError(f"mesh: expected a jax.sharding.Mesh with a {AXIS!r} axis (data_mesh()), "
                        f"got {type(mesh).__name__} {getattr(mesh, 'axis_names', '')}")


def num_shards(mesh) -> int:
    """D, the number of batch shards (the size of the mesh's data axis)."""
    _check_mesh(mesh)
    return int(mesh.shape[AXIS])


def check_batch_size(batch_size: int, mesh) -> None:
    """Raises ValueError unless the global batch divides evenly over the data axis."""
    d = num_shards(mesh)
    if batch_size % d:
        raise ValueError(
            f"batch_size={batch_size} does not divide over the {d} devices of the mesh; expected "
            f"a multiple of {d} (e.g. {max(d, batch_size - batch_size % d)})")


def replicated(mesh) -> NamedSharding:
    """Placement of parameters, optimizer state and keys: a full copy on every device."""
    _check_mesh(mesh)
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh) -> NamedSharding:
    """Placement of a batch: axis 0 (B) split over the data axis, other axes whole."""
    _check_mesh(mesh)
    return NamedSharding(mesh, PartitionSpec(AXIS))


def constrain_batch(batch, mesh):
    """Inside ``jit``: asks XLA to shard every leaf of ``batch`` on its leading (batch) axis."""
    return jax.lax.with_sharding_constraint(batch, batch_sharding(mesh))


def replicate(tree, mesh):
    """Places every array leaf of ``tree`` on all devices of ``mesh`` (typed keys included).

    Uses ``make_array_from_process_local_data`` so that under ``jax.distributed`` every process
    contributes its own (identical) copy, which is what a replicated global array is made of.
    """
    sharding = replicated(mesh)

    def put(leaf):
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            data = jax.make_array_from_process_local_data(
                sharding, np.asarray(jax.random.key_data(leaf)))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
        return jax.make_array_from_process_local_data(sharding, np.asarray(leaf))

    return jax.tree.map(put, tree)


def host_local(tree):
    """This process's full copy of replicated arrays (for saving under ``jax.distributed``)."""
    return jax.tree.map(lambda x: x.addressable_data(0) if isinstance(x, jax.Array)
                        and not x.is_fully_addressable else x, tree)


def shard_batch(batch, mesh):
    """Places a global batch (the same on every process) sharded on its batch axis.

    Shapes: every leaf ``[B, ...]`` with B divisible by the number of devices.
    """
    d = num_shards(mesh)
    sharding = batch_sharding(mesh)
    for path, leaf in jax.tree_util.tree_flatten_with_path(batch)[0]:
        if np.ndim(leaf) == 0 or np.shape(leaf)[0] % d:
            raise ValueError(
                f"batch{jax.tree_util.keystr(path)} has shape {np.shape(leaf)}; expected a leading "
                f"batch axis divisible by the {d} devices of the mesh")
    return jax.tree.map(lambda x: jax.device_put(x, sharding), batch)


def make_parallel_train_step(model, task, opt_cfg: train.OptimizerConfig, mesh, optimizer=None):
    """``train.make_train_step`` compiled for the mesh: ``(state, batch, key=None)``.

    The batch is sharded on its batch axis (place it with :func:`shard_batch`, or let the
    step move it), the state replicated (:func:`replicate`); returns the replicated new state
    and metrics, equal to the single-device step's to float tolerance. A jitted function
    (``.lower`` works); a batch that does not divide over the devices raises ValueError.
    """
    step_fn = train.make_train_step(model, task, opt_cfg, optimizer)
    rep = replicated(mesh)

    def parallel_train_step(state, batch, key=None):
        check_batch_size(int(np.shape(batch["xs"])[0]), mesh)
        state = jax.lax.with_sharding_constraint(state, rep)
        return step_fn(state, constrain_batch(batch, mesh), key)

    return jax.jit(parallel_train_step, out_shardings=(rep, rep))


def _sampled_step(state, key, *, model, task, opt_cfg, batch_size, dropout, mesh, optimizer):
    step_fn = train.make_train_step(model, task, opt_cfg, optimizer, sampled=True)
    batch = train.sample_batch(task, key, state.step, batch_size)
    if mesh is not None:
        batch = constrain_batch(batch, mesh)
    drop = jax.random.fold_in(train.run_keys(key).dropout, state.step) if dropout else None
    return step_fn(state, batch, drop)


# Static arguments: repeated fit() calls with the same (hashable) model, task and config reuse
# one compiled program from jit's cache.
_cached_sampled_step = jax.jit(
    _sampled_step, static_argnames=("model", "task", "opt_cfg", "batch_size", "dropout", "mesh",
                                    "optimizer"))


def make_sampled_step(model, task, opt_cfg: train.OptimizerConfig, *, batch_size: int,
                      dropout: bool = False, mesh=None, optimizer=None):
    """The jitted step ``(state, key) -> (state, metrics)`` that draws its own batch.

    Step s (``s = state.step``) trains on ``train.sample_batch(task, key, s, B)`` with dropout
    key ``fold_in(run_keys(key).dropout, s)`` when ``dropout``: the body of ``train.train``'s
    scan, one step per call. With a ``mesh`` the batch is sharded over its data axis and the
    state replicated. ``optimizer`` defaults to ``train.make_optimizer(opt_cfg)``.
    """
    static = dict(model=model, task=task, opt_cfg=opt_cfg, batch_size=batch_size,
                  dropout=dropout, mesh=mesh, optimizer=optimizer)
    if mesh is not None:
        check_batch_size(batch_size, mesh)
        rep = replicated(mesh)
        return jax.jit(functools.partial(_sampled_step, **static), in_shardings=(rep, rep),
                       out_shardings=(rep, rep))
    try:
        hash((model, task, opt_cfg, optimizer))
    except TypeError:  # an unhashable model or task: compile for this call only
        return jax.jit(functools.partial(_sampled_step, **static))
    return functools.partial(_cached_sampled_step, **static)


def parallel_train(key, model, task, opt_cfg: train.OptimizerConfig, *, num_steps: int,
                   batch_size: int, mesh, dropout: bool = False, state=None):
    """``train.train`` over a mesh: one compiled ``lax.scan`` of data-parallel steps.

    Returns ``(state, metrics)`` like ``train.train`` (metrics stacked: ``[num_steps]``),
    replicated over the mesh; equal to ``train.train`` to float tolerance.
    """
    check_batch_size(batch_size, mesh)
    optimizer = train.make_optimizer(opt_cfg)
    if state is None:
        state = train.init_state(key, model, task, optimizer)
    step_fn = train.make_train_step(model, task, opt_cfg, optimizer, sampled=True)

    def run(state, key):
        def body(s, _):
            batch = constrain_batch(train.sample_batch(task, key, s.step, batch_size), mesh)
            drop = jax.random.fold_in(train.run_keys(key).dropout, s.step) if dropout else None
            return step_fn(s, batch, drop)

        return jax.lax.scan(body, state, None, length=num_steps)

    rep = replicated(mesh)
    return jax.jit(run, in_shardings=(rep, rep), out_shardings=(rep, rep))(
        replicate(state, mesh), replicate(key, mesh))
