"""Every training experiment's ``--models`` takes any registered cell besides its own variants."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import experiments.char_lm as char_lm  # noqa: E402
from experiments import adding, copy, harness, mnist1d, remedies  # noqa: E402
from rnn_jax.cells import CELLS, get_cell  # noqa: E402
from rnn_jax.model import SequenceModel  # noqa: E402

BUILDERS = {
    adding: lambda name: adding.make_cell(name, 4),
    copy: lambda name: copy.make_cell(name, 4, 10),
    remedies: lambda name: remedies.make_cell(name, 4, 10),
    mnist1d: lambda name: mnist1d.make_model(name, 4, 40, 10).cells[0],
    char_lm: lambda name: char_lm.make_model(
        name, harness.make_config(char_lm, smoke=True), 12).cells[0],
}


@pytest.mark.parametrize("module", list(BUILDERS), ids=lambda m: m.__name__.split(".")[-1])
def test_every_registered_cell_is_a_model_name(module):
    own = getattr(module, "MODELS", getattr(module, "BASE_MODELS", ()))
    allowed = harness.with_registry(own)
    assert allowed[:len(own)] == tuple(own) and set(CELLS) <= set(allowed)
    for name in CELLS:
        cfg = harness.make_config(module, {"models": name}, smoke=True)
        assert cfg.models == (name,)
        if name not in own:  # the experiment's own variants keep their own initialisation
            assert type(BUILDERS[module](name)) is type(get_cell(name, 4)), name
    with pytest.raises(ValueError, match="models"):
        harness.make_config(module, {"models": "tanh,nonesuch"}, smoke=True)


@pytest.mark.parametrize("name", [n for n in CELLS if n not in adding.MODELS])
def test_registered_cells_train_the_adding_readout(name):
    """The cell an experiment builds runs in its model: finite outputs and gradients."""
    model = SequenceModel(adding.make_cell(name, 4), 1, readout="last")
    params = model.init(jax.random.key(0), 2)
    xs = jnp.asarray(np.random.default_rng(0).standard_normal((3, 7, 2)), jnp.float32)
    grads = jax.grad(lambda p: jnp.sum(model.apply(p, xs) ** 2))(params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
