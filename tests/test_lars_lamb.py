"""LAMB from parts equals optax.lamb, and the "LARS and LAMB from parts" page's code runs as written."""

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lars_optax

PAGE = Path(__file__).resolve().parents[1] / "docs" / "lars_and_lamb.md"


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_lamb_from_parts_equals_optax_lamb_in_float64(weight_decay):
  rng = np.random.default_rng(0)
  shapes = {"conv": (3, 3, 2, 4), "dense": (6, 5), "bias": (5,), "zero": (4, 3)}
  with jax.enable_x64(True):
    params = {name: jnp.asarray(rng.normal(size=shape)) for name, shape in shapes.items()}
    params["zero"] = jnp.zeros(shapes["zero"])  # ‖w‖ = 0: λ = 1 on both sides.
    grads = [{name: jnp.asarray(rng.normal(size=shape)) for name, shape in shapes.items()} for _ in range(10)]
    schedule = optax.linear_schedule(1e-2, 1e-3, 10)
    parts = optax.chain(
      optax.scale_by_adam(eps=1e-6),
      optax.add_decayed_weights(weight_decay),
      lars_optax.scale_by_trust_ratio(trust_coefficient=1.0, mask=lars_optax.every_leaf_mask),
      optax.scale_by_learning_rate(schedule),
    )
    results = []
    for opt in (parts, optax.lamb(schedule, weight_decay=weight_decay)):
      p, state = params, opt.init(params)
      for grad in grads:
        updates, state = jax.jit(opt.update)(grad, state, p)
        p = optax.apply_updates(p, updates)
      results.append(p)
    ours, peer = results
    for name in shapes:
      assert ours[name].dtype == jnp.float64
      np.testing.assert_allclose(ours[name], peer[name], rtol=1e-12, atol=1e-14, err_msg=name)
      assert not np.allclose(peer[name], params[name])  # both really moved.


def test_page_code_cells_run():
  cells = re.findall(r"```\{code-cell\} ipython3\n(.*?)```", PAGE.read_text(), re.S)
  assert len(cells) >= 4
  namespace: dict = {}
  for index, cell in enumerate(cells):
    exec(compile(cell, f"{PAGE.name} cell {index}", "exec"), namespace)
  # The page's claims, checked on its own results: chains equal the fused LARS, LAMB from parts equals
  # optax.lamb, and the layer-wise Lion fits its problem.
  run, params, grads, difference = (
    namespace["run"],
    namespace["params"],
    namespace["grads"],
    namespace["max_difference"],
  )
  assert (
    difference(run(namespace["inside"], params, grads), run(namespace["fused_inside"], params, grads)) < 1e-5
  )
  lamb = optax.lamb(1e-2, weight_decay=1e-2)
  assert difference(run(namespace["lamb_from_parts"], params, grads), run(lamb, params, grads)) < 1e-5
  assert float(namespace["loss"](namespace["p"])) < 0.1 * float(namespace["loss"](params))
