"""Each peer's own LARS, run side by side with the lars_optax arguments that docs/peers.md maps it to.

Same parameters, same gradients, 20 steps, float64 on both sides, and a learning rate that changes every
step (so that "LR inside" and "LR outside the momentum buffer" cannot be confused). The peers are the real
packages of the ``peers`` extra (``pip install -e ".[peers]"`` and, without its dependencies,
``tf-models-official`` and ``tf-keras``: see docs/peers.md); each test skips, saying why, when its peer is
not installed. Run with ``-s`` to see each peer's maximum relative difference.
"""

import importlib
import importlib.util
import pickle
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lars_optax

NUM_STEPS = 20
TOLERANCE = 1e-12  # float64 on both sides: above this is a different formula, not round-off.
SHAPES = {"conv/kernel": (3, 3, 2, 4), "dense/kernel": (6, 5), "dense/bias": (5,), "bn/scale": (4,)}


def learning_rate(step):
  """γ_t, changing every step; works on Python numbers, JAX and TensorFlow tensors alike."""
  return 0.5 / (1.0 + step) + 0.1 * step


def _problem():
  rng = np.random.default_rng(0)
  params = {name: rng.normal(size=shape) for name, shape in SHAPES.items()}
  grads = [
    {name: rng.normal(size=shape) * 10.0 ** rng.uniform(-2, 1) for name, shape in SHAPES.items()}
    for _ in range(NUM_STEPS)
  ]
  return params, grads


def _run_lars_optax(opt):
  params, grads = _problem()
  with jax.enable_x64(True):
    params = {name: jnp.asarray(value, jnp.float64) for name, value in params.items()}
    state = opt.init(params)
    step = jax.jit(opt.update)
    for grad in grads:
      updates, state = step({k: jnp.asarray(v, jnp.float64) for k, v in grad.items()}, state, params)
      params = optax.apply_updates(params, updates)
    return {name: np.asarray(value) for name, value in params.items()}


def _max_relative_difference(peer, ours, label):
  differences = {name: np.max(np.abs(ours[name] - peer[name])) / np.max(np.abs(peer[name])) for name in peer}
  worst = max(differences.values())
  print(f"\n{label}: max relative difference after {NUM_STEPS} steps = {worst:.2e}")
  assert worst < TOLERANCE, differences
  # The peer really moved every leaf (a test of equal no-ops would prove nothing).
  initial, _ = _problem()
  assert all(np.max(np.abs(peer[name] - initial[name])) > 1e-6 for name in peer)
  return worst


def _import_or_skip(module):
  try:
    return importlib.import_module(module)
  except ImportError as error:
    pytest.skip(f"{module} is not installed ({error}); install the peers extra, see docs/peers.md")


# ---------------------------------------------------------------------------------------------------------
# timm


def _timm_steps(groups, options):
  """timm's own `Lars` over the steps of `_problem`, in float64; the final parameters."""
  import torch
  from timm.optim import Lars

  params, grads = _problem()
  tensors = {
    name: torch.tensor(value, dtype=torch.float64, requires_grad=True) for name, value in params.items()
  }
  param_groups = [{"params": [tensors[name] for name in names], **extra} for names, extra in groups]
  opt = Lars(param_groups, **options)
  for t, grad in enumerate(grads):
    for group in opt.param_groups:
      group["lr"] = learning_rate(t)
    for name, tensor in tensors.items():
      tensor.grad = torch.tensor(grad[name], dtype=torch.float64)
    opt.step()
  return {name: tensor.detach().numpy() for name, tensor in tensors.items()}


def _run_timm(groups, **options):
  """`_timm_steps` in a fresh process: PyTorch crashes when imported after TensorFlow, which other tests
  (and the TF Model Garden peer below) import in this one."""
  for module in ("torch", "timm"):
    if importlib.util.find_spec(module) is None:
      pytest.skip(f"{module} is not installed; install the peers extra, see docs/peers.md")
  code = (
    "import pickle, sys, test_peers as t; "
    "sys.stdout.buffer.write(pickle.dumps(t._timm_steps(*pickle.load(sys.stdin.buffer))))"
  )
  result = subprocess.run(
    [sys.executable, "-c", code],
    input=pickle.dumps((groups, options)),
    capture_output=True,
    cwd=Path(__file__).parent,
    timeout=300,
    check=False,
  )
  assert result.returncode == 0, result.stderr.decode(errors="replace")[-3000:]
  return pickle.loads(result.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("nesterov", [False, True])
def test_timm_lars_paper_equivalent(nesterov):
  """timm with kernels in a decayed group and biases/BN in a group without weight decay (so not adapted)."""
  kernels, others = ["conv/kernel", "dense/kernel"], ["dense/bias", "bn/scale"]
  peer = _run_timm(
    [(kernels, {"weight_decay": 5e-4}), (others, {"weight_decay": 0.0})],
    lr=1.0,
    momentum=0.9,
    nesterov=nesterov,
    trust_coeff=0.001,
    eps=0.0,
  )
  ours = _run_lars_optax(
    lars_optax.lars(
      learning_rate,
      momentum=0.9,
      weight_decay=5e-4,
      trust_coefficient=0.001,
      nesterov=nesterov,
      learning_rate_placement="outside",
    )
  )
  _max_relative_difference(peer, ours, f"timm Lars (paper-equivalent, nesterov={nesterov})")


@pytest.mark.slow
def test_timm_lars_trust_clip():
  """timm Lars(trust_clip=True) on every parameter: LARC's min(λ/γ, 1), eps 1e-8, LR outside."""
  peer = _run_timm(
    [(list(SHAPES), {})], lr=1.0, momentum=0.9, weight_decay=1e-4, trust_coeff=0.02, trust_clip=True
  )
  ours = _run_lars_optax(
    lars_optax.lars(
      learning_rate,
      momentum=0.9,
      weight_decay=1e-4,
      trust_coefficient=0.02,
      eps=1e-8,
      trust_clip=True,
      learning_rate_placement="outside",
      mask=lars_optax.every_leaf_mask,
    )
  )
  _max_relative_difference(peer, ours, "timm Lars (trust_clip=True)")


# ---------------------------------------------------------------------------------------------------------
# TF Model Garden


def _run_tf_model_garden(**options):
  tf = _import_or_skip("tensorflow")
  tf_lars = _import_or_skip("official.modeling.optimization.lars")
  keras = _import_or_skip("tf_keras")

  class Schedule(keras.optimizers.schedules.LearningRateSchedule):
    def __call__(self, step):
      return learning_rate(step)

    def get_config(self):
      return {}

  params, grads = _problem()
  variables = {name: tf.Variable(value, dtype=tf.float64, name=name) for name, value in params.items()}
  opt = tf_lars.LARS(learning_rate=Schedule(), **options)
  for grad in grads:
    opt.apply_gradients([(tf.constant(grad[name], tf.float64), variables[name]) for name in variables])
  return {name: variable.numpy() for name, variable in variables.items()}


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("adaptation_list", [None, ["bias", "bn"]])
def test_tf_model_garden_lars(nesterov, adaptation_list):
  """classic_momentum=True with both exclusion lists (None: adaptation follows the weight-decay list)."""
  peer = _run_tf_model_garden(
    momentum=0.9,
    weight_decay_rate=1e-3,
    eeta=0.001,
    nesterov=nesterov,
    classic_momentum=True,
    exclude_from_weight_decay=["bn"],
    exclude_from_layer_adaptation=adaptation_list,
  )
  ours = _run_lars_optax(
    lars_optax.lars(
      learning_rate,
      momentum=0.9,
      weight_decay=1e-3,
      trust_coefficient=0.001,
      nesterov=nesterov,
      trust_ratio_norm="update",
      mask=lars_optax.exclude_names(*(adaptation_list or ["bn"])),
      weight_decay_mask=lars_optax.exclude_names("bn"),
    )
  )
  label = f"TF Model Garden LARS (nesterov={nesterov}, exclude_from_layer_adaptation={adaptation_list})"
  _max_relative_difference(peer, ours, label)


# ---------------------------------------------------------------------------------------------------------
# optax.lars


def _not_named(*substrings):
  return lambda params: {name: not any(s in name for s in substrings) for name in params}


@pytest.mark.parametrize(
  ("peer_masks", "our_masks"),
  [
    pytest.param({}, dict(mask=lars_optax.every_leaf_mask), id="default-masks"),
    pytest.param(
      dict(weight_decay_mask=_not_named("bn"), trust_ratio_mask=_not_named("bias", "bn")),
      dict(mask=lars_optax.exclude_names("bias", "bn"), weight_decay_mask=lars_optax.exclude_names("bn")),
      id="both-masks",
    ),
  ],
)
@pytest.mark.parametrize("nesterov", [False, True])
def test_optax_lars(peer_masks, our_masks, nesterov):
  hyper = dict(weight_decay=1e-3, trust_coefficient=0.001, eps=1e-9, momentum=0.9, nesterov=nesterov)
  peer = _run_lars_optax(optax.lars(learning_rate, **hyper, **peer_masks))
  ours = _run_lars_optax(lars_optax.lars(learning_rate, trust_ratio_norm="update", **hyper, **our_masks))
  _max_relative_difference(
    peer, ours, f"optax.lars ({'masks' if peer_masks else 'default masks'}, nesterov={nesterov})"
  )
