"""lars_optax.mask_table: one row per leaf (path, shape, size, adapted, decayed) and the totals."""

import jax.numpy as jnp

import lars_optax
from tests.test_masks import LINEN_SHAPES, _parse_table, _shapes


def test_mask_table_rows_and_totals(capsys):
  params = _shapes(LINEN_SHAPES)
  table = lars_optax.mask_table(params)
  rows, (leaves, adapted, adapted_size, excluded, excluded_size, *decayed) = _parse_table(table)
  assert rows == [
    ("BatchNorm_0/bias", "(4,)", "4", "no", "no"),
    ("BatchNorm_0/scale", "(4,)", "4", "no", "no"),
    ("Conv_0/bias", "(4,)", "4", "no", "no"),
    ("Conv_0/kernel", "(3, 3, 2, 4)", "72", "yes", "yes"),
    ("Dense_0/bias", "(3,)", "3", "no", "no"),
    ("Dense_0/kernel", "(4, 3)", "12", "yes", "yes"),
  ]
  assert (leaves, adapted, adapted_size, excluded, excluded_size, *decayed) == (6, 2, 84, 4, 15, 2, 84)
  lars_optax.print_mask_table(params)
  assert capsys.readouterr().out == table + "\n"


def test_mask_table_follows_the_given_mask():
  params = _shapes(LINEN_SHAPES)
  pytree_mask = {
    "BatchNorm_0": {"bias": False, "scale": True},
    "Conv_0": {"bias": False, "kernel": False},
    "Dense_0": {"bias": True, "kernel": True},
  }
  rows, counts = _parse_table(lars_optax.mask_table(params, pytree_mask))
  assert {row[0]: row[3] for row in rows} == {
    "BatchNorm_0/bias": "no",
    "BatchNorm_0/scale": "yes",
    "Conv_0/bias": "no",
    "Conv_0/kernel": "no",
    "Dense_0/bias": "yes",
    "Dense_0/kernel": "yes",
  }
  assert counts == (6, 3, 4 + 3 + 12, 3, 4 + 4 + 72, 3, 4 + 3 + 12)
  assert lars_optax.mask_table(params, lars_optax.exclude_names("bias", "scale")) == lars_optax.mask_table(
    params
  )


def test_mask_table_with_layer_axes_and_large_sizes():
  params = _shapes({"blocks": {"kernel": (12, 1024, 1024), "bias": (12, 1024)}})
  rows, counts = _parse_table(lars_optax.mask_table(params, layer_axes=1))
  assert rows == [
    ("blocks/bias", "(12, 1024)", "12,288", "no", "no"),
    ("blocks/kernel", "(12, 1024, 1024)", "12,582,912", "yes", "yes"),
  ]
  assert counts == (2, 1, 12_582_912, 1, 12_288, 1, 12_582_912)


def test_mask_table_shows_both_columns():
  params = {"dense": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4)}, "norm": {"scale": jnp.ones(4)}}
  table = lars_optax.mask_table(
    params, weight_decay_mask={"dense": {"kernel": True, "bias": True}, "norm": {"scale": False}}
  )
  rows = [line.split() for line in table.splitlines()[2:-1]]
  assert rows == [
    ["dense/bias", "(4,)", "4", "no", "yes"],
    ["dense/kernel", "(3,", "4)", "12", "yes", "yes"],
    ["norm/scale", "(4,)", "4", "no", "no"],
  ]
  assert table.splitlines()[-1] == (
    "3 leaves: 1 adapted (12 parameters), 2 excluded (8 parameters); 2 decayed (16 parameters)"
  )
