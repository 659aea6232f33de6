"""benchmarks/device_check: the kernel counting rule, and its smoke mode checked against arithmetic.

The smoke run happens in a subprocess, as ``python -m benchmarks.device_check``, in which TensorFlow, TFDS,
ml-collections and clu cannot be imported, as on an accelerator machine with only JAX installed.
"""

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import hlo_stats
from benchmarks.device_check import cli, update
from models import get_model

REPO_ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ("tensorflow", "tensorflow_datasets", "ml_collections", "clu")

# A module with every case of the rule; the expected counts are written out by hand below.
HLO = """\
HloModule jit_step, is_scheduled=true, entry_computation_layout={(f32[8]{0}, f32[8]{0})->(f32[8]{0}, f32[])}

%region_add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %add = f32[] add(%a, %b)
}

%fused_norms (param_0: f32[8]) -> (f32[], f32[]) {
  %param_0 = f32[8]{0} parameter(0)
  %constant.0 = f32[] constant(0)
  %multiply.0 = f32[8]{0} multiply(%param_0, %param_0)
  %reduce.0 = f32[] reduce(%multiply.0, %constant.0), dimensions={0}, to_apply=%region_add
  %reduce.1 = f32[] reduce(%param_0, %constant.0), dimensions={0}, to_apply=%region_add
  ROOT %tuple.0 = (f32[], f32[]) tuple(%reduce.0, %reduce.1)
}

%fused_scale (param_0.1: f32[8], param_1.1: f32[]) -> f32[8] {
  %param_0.1 = f32[8]{0} parameter(0)
  %param_1.1 = f32[] parameter(1)
  %broadcast.1 = f32[8]{0} broadcast(%param_1.1), dimensions={}
  ROOT %multiply.1 = f32[8]{0} multiply(%param_0.1, %broadcast.1)
}

%command_buffer (p0: f32[8], p1: f32[]) -> f32[8] {
  %p0 = f32[8]{0} parameter(0)
  %p1 = f32[] parameter(1)
  %scale_fusion = f32[8]{0} fusion(%p0, %p1), kind=kLoop, calls=%fused_scale
  %bitcast.2 = f32[2,4]{1,0} bitcast(%scale_fusion)
  ROOT %scale_fusion.1 = f32[8]{0} fusion(%scale_fusion, %p1), kind=kLoop, calls=%fused_scale
}

%body (carry: (s32[], f32[8])) -> (s32[], f32[8]) {
  %carry = (s32[], f32[8]{0}) parameter(0)
  %gte.0 = s32[] get-tuple-element(%carry), index=0
  %gte.1 = f32[8]{0} get-tuple-element(%carry), index=1
  %constant.2 = f32[] constant(2)
  %scale_fusion.2 = f32[8]{0} fusion(%gte.1, %constant.2), kind=kLoop, calls=%fused_scale
  %increment = s32[] add(%gte.0, %gte.0)
  ROOT %tuple.3 = (s32[], f32[8]{0}) tuple(%increment, %scale_fusion.2)
}

%cond (carry.1: (s32[], f32[8])) -> pred[] {
  %carry.1 = (s32[], f32[8]{0}) parameter(0)
  %gte.2 = s32[] get-tuple-element(%carry.1), index=0
  %constant.9 = s32[] constant(4)
  ROOT %compare = pred[] compare(%gte.2, %constant.9), direction=LT
}

ENTRY %main.7 (w: f32[8], g: f32[8]) -> (f32[8], f32[]) {
  %w = f32[8]{0} parameter(0), metadata={op_name="w"}
  %g = f32[8]{0} parameter(1)
  %norms_fusion = ((f32[], f32[]), f32[]) fusion(%w), kind=kInput, calls=%fused_norms
  %gte.5 = f32[] get-tuple-element(%norms_fusion), index=1
  %gemm = (f32[8]{0}, s8[64]{0}) custom-call(%w, %g), custom_call_target="__cublas$gemm"
  %call = f32[8]{0} call(%w, %gte.5), to_apply=%command_buffer
  %copy-start = (f32[8]{0}, f32[8]{0}, u32[]) copy-start(%call)
  %copy-done = f32[8]{0} copy-done(%copy-start)
  %constant.1 = s32[] constant(0)
  %tuple.5 = (s32[], f32[8]{0}) tuple(%constant.1, %copy-done)
  %while = (s32[], f32[8]{0}) while(%tuple.5), condition=%cond, body=%body
  %gte.6 = f32[8]{0} get-tuple-element(%while), index=1
  ROOT %tuple.6 = (f32[8]{0}, f32[]) tuple(%gte.6, %gte.5)
}
"""
# ENTRY: norms_fusion, gemm, copy-start, while; command buffer: 2 fusions; body: 1 fusion and the add;
# condition: the compare. Parameters, constants, tuples, get-tuple-elements, the bitcast and copy-done
# are free; the call is a command buffer, not a kernel.
HLO_BY_OPCODE = {"add": 1, "compare": 1, "copy-start": 1, "custom-call": 1, "fusion": 4, "while": 1}


def test_count_kernels_follows_the_rule_on_a_handwritten_module():
  count = hlo_stats.count_kernels(HLO)
  assert count.by_opcode == HLO_BY_OPCODE
  assert (count.kernels, count.fusions, count.custom_calls, count.command_buffers) == (9, 4, 1, 1)


def test_count_kernels_of_compiled_elementwise_code_is_one_fusion():
  compiled = jax.jit(lambda x: jnp.sin(x) * 2 + 1).lower(jnp.ones(1000)).compile()
  count = hlo_stats.count_kernels(compiled.as_text())
  assert (count.kernels, count.fusions, count.command_buffers) == (1, 1, 0)


def test_count_kernels_needs_an_entry_computation():
  with pytest.raises(ValueError, match="ENTRY"):
    hlo_stats.count_kernels(HLO.replace("ENTRY ", ""))


# --- the smoke run ------------------------------------------------------------------------------

_SMOKE_RUN = """
import runpy
import sys
for name in {blocked!r}:
  sys.modules[name] = None  # `import name` now raises ImportError
sys.argv = ["benchmarks.device_check", "--smoke", "--output_dir", {output!r}]
runpy.run_module("benchmarks.device_check", run_name="__main__", alter_sys=True)  # python -m
loaded = sorted(name for name in sys.modules if name.split(".")[0] in {blocked!r} and sys.modules[name])
print("BLOCKED MODULES LOADED:", loaded)
"""


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  """Runs ``--smoke`` once in a subprocess without TF/TFDS/ml-collections/clu.

  Returns the JSON results, the markdown report and the CPU seconds the run took.
  """
  output = tmp_path_factory.mktemp("device_check")
  env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
  start = time.perf_counter()
  cpu_start = resource.getrusage(resource.RUSAGE_CHILDREN)
  process = subprocess.run(
    [sys.executable, "-c", _SMOKE_RUN.format(blocked=BLOCKED, output=str(output))],
    cwd=REPO_ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=900,  # a loaded machine stretches the wall time; test_smoke_mode_is_quick bounds its CPU time
  )
  seconds = time.perf_counter() - start
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  cpu_seconds = usage.ru_utime + usage.ru_stime - cpu_start.ru_utime - cpu_start.ru_stime
  assert process.returncode == 0, process.stderr[-4000:]
  assert "BLOCKED MODULES LOADED: []" in process.stdout
  results = json.loads((output / "device_check.json").read_text())
  print(f"smoke run: {seconds:.1f} s wall, {cpu_seconds:.1f} s CPU")
  return results, (output / "device_check.md").read_text(), cpu_seconds


def _params(model_name, image_size):
  """Shapes of the model's parameters with 1000 classes, computed without device_check."""
  model = get_model(model_name, num_classes=1000)
  variables = jax.eval_shape(
    lambda: model.init(jax.random.key(0), jnp.zeros((1, image_size, image_size, 3)), train=False)
  )
  return jax.tree.leaves(variables["params"])


@pytest.mark.slow
@pytest.mark.timeout(960)
def test_smoke_runs_every_part_without_tensorflow(smoke):
  results, text, _ = smoke
  assert results["smoke"] and results["errors"] == []
  env = results["environment"]
  assert (env["jax"], env["platform"]) == (jax.__version__, "cpu")
  for part in ("update", "train", "accumulation"):
    assert results[part]["skipped"] == [], part
  assert set(results["update"]["optimizers"]) == set(update.UPDATE_OPTIMIZERS)
  assert list(results["train"]["optimizers"]) == ["sgd", "lars"]
  assert list(results["accumulation"]["optimizers"]) == ["lars", "sgd"]
  assert f"Device: {env['device_kind']}" in text and len(results["goals"]) == 6


@pytest.mark.slow
@pytest.mark.timeout(960)
def test_smoke_update_figures_are_consistent_with_the_parameter_tree(smoke):
  results, text, _ = smoke
  update, args = results["update"], results["arguments"]
  leaves = _params(args["model"], args["image_size"])
  num_params = sum(leaf.size for leaf in leaves)
  num_adapted = sum(leaf.size for leaf in leaves if leaf.ndim > 1)
  assert (update["num_leaves"], update["num_params"], update["num_adapted_params"]) == (
    len(leaves),
    num_params,
    num_adapted,
  )
  copy = results["copy_bandwidth"]
  assert copy["bytes_per_copy"] == 2 * args["copy_mib"] * 2**20  # a float32 array read and written
  np.testing.assert_allclose(copy["bytes_per_s"], copy["bytes_per_copy"] / np.median(copy["times_s"]))
  sgd = update["optimizers"]["sgd"]
  for name, fig in update["optimizers"].items():
    # 20 B per parameter (read w, g, v; write w, v); LARS reads w and g again for the adapted leaves.
    assert fig["bytes_floor"] == 20 * num_params + (0 if name == "sgd" else 8 * num_adapted), name
    assert fig["bytes_xla"] > 0
    np.testing.assert_allclose(fig["roofline_floor_s"], fig["bytes_floor"] / copy["bytes_per_s"])
    np.testing.assert_allclose(
      fig["roofline_floor_fraction"], fig["roofline_floor_s"] / fig["in_program"]["median_s"]
    )
    assert fig["kernels"] == sum(fig["kernels_by_opcode"].values()) >= fig["fusions"] > 0
    for mode in ("dispatch", "in_program"):
      times = fig[mode]["times_s"]
      assert len(times) == update["repetitions"]
      np.testing.assert_allclose(fig[mode]["median_s"], np.median(times))
      np.testing.assert_allclose(
        fig[mode]["ratio_to_sgd"], np.median(times) / np.median(sgd[mode]["times_s"])
      )
      np.testing.assert_allclose(
        fig[mode]["ratio_to_sgd_per_round"], np.median(np.asarray(times) / sgd[mode]["times_s"])
      )
    if name != "sgd":
      # At least one norm kernel per adapted leaf more than SGD (on the CPU, reductions are not merged).
      adapted_leaves = sum(leaf.ndim > 1 for leaf in leaves)
      assert fig["kernels"] >= sgd["kernels"] + adapted_leaves, name
  assert (
    f"| lars_optax.lars | {1e3 * update['optimizers']['lars_optax.lars']['in_program']['median_s']:.3f} |"
    in text
  )


@pytest.mark.slow
@pytest.mark.timeout(960)
def test_smoke_training_figures_are_consistent_with_their_timings(smoke):
  results, text, _ = smoke
  args = results["arguments"]
  for key, k in (("train", 1), ("accumulation", args["accum_steps"])):
    part = results[key]
    assert part["grad_accum_steps"] == k
    assert part["images_per_step"] == k * args["batch_size"]
    assert part["peak_memory"] is None  # the CPU backend keeps no allocator statistics
    figs = part["optimizers"]
    for name, fig in figs.items():
      assert len(fig["times_s"]) == part["rounds"] >= 1
      np.testing.assert_allclose(fig["images_per_s"], part["images_per_step"] / np.median(fig["times_s"]))
      memory = fig["program_bytes"]
      assert (
        memory["total"] == memory["arguments"] + memory["outputs"] + memory["temporaries"] - memory["aliased"]
      )
      assert f"| {name} | {1e3 * fig['median_s']:.3f} |" in text
    np.testing.assert_allclose(part["lars_over_sgd"], figs["lars"]["median_s"] / figs["sgd"]["median_s"])
    assert figs["lars"]["kernels"] > figs["sgd"]["kernels"]
  base = results["train"]["optimizers"]
  for name, ratio in results["accumulation"]["images_per_s_vs_k1"].items():
    fig = results["accumulation"]["optimizers"][name]
    np.testing.assert_allclose(ratio, fig["images_per_s"] / base[name]["images_per_s"])
  assert set(results["accumulation"]["images_per_s_vs_k1"]) == {"lars", "sgd"}


@pytest.mark.slow
@pytest.mark.timeout(960)
def test_smoke_mode_is_quick(smoke):
  # CPU time rather than wall time, which a loaded machine stretches: 47 s (30 s wall) on 2 idle cores.
  assert smoke[2] < 150, f"the smoke run took {smoke[2]:.0f} CPU seconds"


@pytest.mark.slow
def test_an_exhausted_budget_skips_every_compilation(tmp_path):
  results = cli.main(["--smoke", "--time_budget_s", "0", "--output_dir", str(tmp_path)])
  assert len(results["update"]["skipped"]) == len(update.UPDATE_OPTIMIZERS)
  assert results["update"]["optimizers"] == {}
  for part in ("train", "accumulation"):
    assert len(results[part]["skipped"]) == 2 and results[part]["optimizers"] == {}, part
  assert results["errors"] == []
  saved = json.loads((tmp_path / "device_check.json").read_text())
  assert saved["update"]["skipped"] == results["update"]["skipped"]
  assert "not measured" in (tmp_path / "device_check.md").read_text()


def test_smoke_flags_keep_explicit_values():
  args = cli.parse_args(["--smoke", "--output_dir", "x", "--batch_size", "3"])
  assert (args.batch_size, args.model) == (3, cli.SMOKE["model"])
  full = cli.parse_args(["--output_dir", "x"])
  assert (full.model, full.batch_size, full.fallback_batch_size, full.accum_steps) == (
    "resnet50",
    256,
    128,
    4,
  )


def test_default_run_writes_to_an_ignored_build_folder():
  args = cli.parse_args([])
  assert not args.smoke and args.output_dir == cli.DEFAULT_OUTPUT_DIR
  assert args.update_budget_s <= args.time_budget_s  # the update part leaves time to the training parts
  ignored = subprocess.run(
    ["git", "check-ignore", "-q", str(args.output_dir / "device_check.json")], cwd=REPO_ROOT, check=False
  )
  assert ignored.returncode == 0
