"""The experiment configs, shrunk by overrides (width 8, tiny experts, no augmentation, an MLP
evaluator) on a tiny real Fashion-MNIST subset, TFDS mock data for CIFAR and a small random npz for
Tiny-ImageNet.

Every ``experiments/configs/*.py`` (discovered with glob, so a new config is covered) builds its method
and traces one distillation step; one config per kind of pipeline also runs end to end through the
CLI's ``experiments.distill.run`` (1 step, 1-epoch 1-seed evaluation, results file): compiling every
config's step and evaluation would take far longer than a test may."""
import glob
import json
import importlib.util
import os
import platform
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

import jaxdistill as jd
from experiments import distill, registry
from experiments.configs import papers
from experiments.methods import datm

import golden

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "experiments", "configs")
HELPERS = ("__init__.py", "common.py", "papers.py")
CONFIGS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(CONFIG_DIR, "*.py"))
                 if os.path.basename(p) not in HELPERS)
MOCK_EXAMPLES = {"cifar10": 200, "cifar100": 1000}  # >= 2 images in every class (deterministic mock)


def load_config(name: str, arg=None):
  """``get_config([arg])`` of ``experiments/configs/<name>``."""
  spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(CONFIG_DIR, name))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config() if arg is None else mod.get_config(arg)


def override(c, changes: dict):
  """``c`` with ``{"a.b": value}`` set (nested keys by dots; new keys allowed)."""
  for dotted, value in changes.items():
    *parents, leaf = dotted.split(".")
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def shrink(c, workdir: str, tiny_npz: str, mlp: bool = False):
  """The smallest run of ``c`` that still goes through every piece the config names; ``mlp``: distill
  with a width-8 MLP (compiles in a fraction of a ConvNet's time)."""
  small = {"steps": 1, "ipc": 1, "seed": 0, "num_seeds": 1, "eval_protocol": "", "eval_epochs": 1,
           "eval_augment": "none",
           "eval_models": ("mlp",), "eval_model_kwargs": {"mlp": {"width": 8}},
           "model_kwargs.width": 8, "distill_augment": "none", "batch_real": 2, "progress": False,
           "checkpoint_every": 1, "image_every": 0, "workdir": workdir,
           "results": os.path.join(workdir, "results.md")}
  if mlp:
    small.update({"model": "mlp", "model_kwargs": {"width": 8}})
  small["zca"] = False  # fitting ZCA on 3072-4096 dimensions takes minutes of a loaded CPU
  if c.dataset == "fashion_mnist":
    small["max_per_class"] = 10
  if c.dataset.startswith("custom") or c.dataset == "tiny_imagenet":
    small["data_dir"] = tiny_npz
  smoke = getattr(registry.method_module(c.method), "smoke", None)
  if smoke is not None:
    small.update(smoke(c))
  return override(c, small)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """One work directory for the module: experts and random-real baselines are shared between tests."""
  return str(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
  """Tiny-ImageNet's layout (64x64x3 uint8, 200 classes), 3 training / 1 test image per class."""
  rng = np.random.default_rng(0)
  path = str(tmp_path_factory.mktemp("tiny") / "tiny_imagenet.npz")
  np.savez(path, x_train=rng.integers(0, 256, (600, 64, 64, 3), dtype=np.uint8),
           y_train=np.repeat(np.arange(200), 3), x_test=rng.integers(0, 256, (200, 64, 64, 3),
                                                                      dtype=np.uint8),
           y_test=np.arange(200))
  return path


@pytest.fixture(scope="module")
def data_cache():
  return {}


@pytest.fixture
def cached_data(monkeypatch, data_cache):
  """``registry.load_data`` once per dataset variant, TFDS names under ``tfds.testing.mock_data``."""
  load = registry.load_data

  def cached(c):
    k = (c.dataset, bool(c.get("zca")), c.get("max_per_class"), c.get("data_dir"))
    if k not in data_cache:
      with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES.get(c.dataset, 1)):
        data_cache[k] = load(c)
    return data_cache[k]

  monkeypatch.setattr(registry, "load_data", cached)


def fake_experts(c, data, model):
  """Untrained trajectories of the config's shape: building a method needs no real experts."""
  params = jd.evaluate.init_variables(jax.random.key(0), model, data.image_shape)["params"]
  epochs = [jax.tree.map(lambda x, e=e: x * (1.0 + 0.01 * e), params)
            for e in range(c.experts.epochs + 1)]
  return jd.experts.from_params([epochs] * c.experts.num)


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds_and_traces_a_step(name, workdir, tiny_npz, cached_data, monkeypatch):
  """Every config: its method builds from its fields on its dataset, its evaluators exist, and one
  distillation step traces (shapes and dtypes through the whole step, without compiling it)."""
  c = load_config(name)
  if "method" not in c:  # another experiment's config (baselines, the SelMatch sweep): it loads
    return
  assert c.method in registry.method_names()
  assert set(c.eval_models) <= set(jd.models.MODEL_NAMES), c.eval_models
  c = shrink(c, workdir, tiny_npz)
  monkeypatch.setattr(registry, "experts", fake_experts)  # DATM's real-expert path runs end to end
  monkeypatch.setattr(datm, "correct_init",
                      lambda c, data, model, params: registry.random_init(c, data))
  monkeypatch.setattr(jd.objectives, "soft_labels_from_experts",
                      lambda apply, nets, images, labels: jax.nn.one_hot(labels, data.num_classes))
  monkeypatch.setattr(registry, "difficulty_scores",
                      lambda d, ids, e, *kind: np.arange(len(data.y_train), dtype=np.float64))
  data = registry.load_data(c)
  m = registry.build(c, data)
  assert set(m.evaluators) == set(c.evals)
  d = jd.distill.Distiller(m.objective, m.optimizer, m.sampler, mask=m.mask, decode=m.decode)
  state = jd.distill.init_state(jax.random.key(0), m.init, d)
  step = (jnp.zeros((), jnp.int32),) if d.sampler.uses_step else ()
  batch = jax.eval_shape(lambda k: d.sampler.fn(k, d.sampler.arrays, *step), jax.random.key(1))
  with jax.numpy_dtype_promotion("standard"):  # optax's Adam bias correction mixes int and float
    new_state, metrics = jax.eval_shape(jd.distill.make_step(d), state, batch)
  assert new_state.syn.images.shape == state.syn.images.shape and metrics["loss"].shape == ()


# One end-to-end run per kind of pipeline: experts trained for real, partial updates, coverage and
# combined augmentation (SelMatch); soft labels with MSE and the kernel evaluator (KIP); DD's own
# evaluation; TFDS (mock) data with ZCA, expert soft labels and DATM's growing range.
END_TO_END = ("selmatch_fmnist.py", "kip_fmnist.py", "dd_fmnist.py", "datm_cifar10.py")


@pytest.mark.slow
@pytest.mark.parametrize("name", END_TO_END)
def test_config_runs_end_to_end(name, workdir, tiny_npz, cached_data):
  """1 distillation step and a 1-epoch, 1-seed evaluation through the CLI's ``run``."""
  c = shrink(load_config(name), workdir, tiny_npz, mlp=True)
  with jax.numpy_dtype_promotion("standard"):  # optax's Adam bias correction mixes int and float
    out = distill.run(c)
  assert len(out["history"]) == 1 and np.isfinite(out["history"][0]["loss"])
  assert {r[0] for r in out["rows"]} == set(c.evals)
  for _, _, got, base in out["rows"]:
    for v in (got, base):
      assert np.isfinite(v.mean if isinstance(v, jd.types.EvalResult) else v)
  assert os.path.exists(c.results)


@pytest.mark.slow
def test_a_cifar10_paper_config_runs_on_cifar10_as_tfds_downloads_it(workdir, tmp_path, monkeypatch):
  """dm_cifar10's smoke run on CIFAR-10 read from TFDS's download of the builder's registered URL (a
  small archive in the published binary format, put in TFDS's download cache), without TensorFlow."""
  import functools
  import archives
  from jaxdistill.data import datasets
  written = archives.seed_tfds_cache(tmp_path, "cifar10", datasets._PUBLISHED_URLS["cifar10"]["archive"],
                                     lambda p: archives.cifar(p, "cifar10", "binary", per_batch=4))
  monkeypatch.setattr(jd.data, "load", functools.partial(jd.data.load, tfds_data_dir=str(tmp_path)))
  c = shrink(load_config("dm_cifar10.py", "1"), workdir, "", mlp=True)
  data = registry.load_data(c)
  np.testing.assert_array_equal(data.y_train, written[1])  # 2 images of each class
  with jax.numpy_dtype_promotion("standard"):
    out = distill.run(c)
  assert len(out["history"]) == 1 and np.isfinite(out["history"][0]["loss"])
  assert all(np.isfinite(got.mean if isinstance(got, jd.types.EvalResult) else got)
             for _, _, got, _ in out["rows"])


TABLES = {"mtt": papers.MTT, "datm": papers.DATM, "selmatch": papers.SELMATCH,
          "dc": {d: {1: 0, 10: 0, 50: 0} for d in papers.DATASETS},
          "dsa": {d: {1: 0, 10: 0, 50: 0} for d in papers.DATASETS},
          "dm": {d: {1: 0, 10: 0, 50: 0} for d in papers.DATASETS}}
PAPER_CONFIGS = [n for n in CONFIGS if n[:-3].split("_", 1)[1] in papers.DATASETS]


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_config_every_ipc(name):
  """``--config <file>:<ipc>`` builds for every IPC of the file's published table, and no other."""
  method, dataset = name[:-3].split("_", 1)
  for ipc in TABLES[method][dataset]:
    c = load_config(name, str(ipc))
    assert (c.method, c.ipc) == (method, ipc)
    if "mtt" in c:  # the experts cover every segment; batch_syn divides the synthetic set
      rows = c.ipc * {"cifar10": 10, "cifar100": 100, "tiny": 200}[dataset]
      assert c.experts.epochs >= c.mtt.max_start_epoch + c.mtt.expert_epochs
      assert c.mtt.batch_syn == 0 or rows % c.mtt.batch_syn == 0
  if method != "dm":  # DM runs at any IPC
    with pytest.raises(ValueError, match="IPC"):
      load_config(name, "7")


@pytest.mark.slow
def test_run_extends_and_reevaluates_a_finished_run(workdir, tiny_npz, cached_data):
  """Steps and evaluation fields are not the run's identity: a finished run is extended to more steps
  and re-evaluated with other evaluation settings from its checkpoint."""
  c = shrink(load_config("dm_fmnist.py"), workdir, tiny_npz, mlp=True)
  c.workdir = os.path.join(workdir, "extend")
  first = distill.run(c)
  c.steps, c.eval_epochs = 2, 2
  second = distill.run(c)
  assert [h["step"] for h in first["history"]] == [1] and [h["step"] for h in second["history"]] == [2]
  c.optimizer_kwargs.learning_rate = 0.5  # another run: its checkpoint directory is refused
  with pytest.raises(ValueError, match="another"):
    distill.run(c)


def test_unknown_method_and_missing_data_dir_are_refused(tiny_npz):
  c = load_config("dm_fmnist.py")
  c.method = "nope"
  with pytest.raises(ValueError, match="Unknown method"):
    registry.build(c, None)
  c = load_config("mtt_tiny.py")
  with pytest.raises(ValueError, match="data_dir"):
    registry.load_data(c)


def test_selmatch_sweep_holds_out_disjoint_images_and_its_config_is_consistent():
  """The ratio study's window is chosen on training images outside the subset: every class keeps
  ``per_class`` images in the subset, the rest held out, no image in both; the config gives alphas for
  every ratio and whole IPCs."""
  from experiments import selmatch
  data = jd.data.load("fashion_mnist", max_per_class=5, key=jax.random.key(0))
  per_class = 3
  sub, x_hold, y_hold = selmatch.split_holdout(data, per_class)
  counts = np.bincount(sub.y_train, minlength=data.num_classes)
  assert (counts == per_class).all(), counts
  assert len(y_hold) == len(data.y_train) - per_class * data.num_classes
  flat = lambda x: {row.tobytes() for row in x.reshape(len(x), -1)}
  assert not flat(sub.x_train) & flat(x_hold)
  with pytest.raises(ValueError, match="holdout_per_class"):
    selmatch.split_holdout(sub, per_class)
  c = load_config("selmatch_sweep_fmnist.py")
  selmatch.check_config(c, data.num_classes)  # every stage of the shipped config can run
  # The protocol study (same subset, other experts and MTT settings) runs in its own directory, and
  # its accelerator version (every ratio) in another, with its own results file.
  protocol = load_config("selmatch_protocol_fmnist.py")
  accel = load_config("selmatch_protocol_fmnist_accel.py")
  assert len({c.workdir, protocol.workdir, accel.workdir}) == 3 and accel.out != protocol.out
  assert (accel.ratios, accel.alphas, accel.per_class) == (c.ratios, c.alphas, protocol.per_class)
  selmatch.check_config(accel, data.num_classes)
  c.mtt.batch_syn = 100  # does not divide ratio 5%'s 150 rows: refused before any work
  with pytest.raises(ValueError, match="batch_syn"):
    selmatch.check_config(c, data.num_classes)
  # The evaluation rule: the recorded reference schedule with learned step sizes, or SelMatch's own
  # rule per ratio with none for any set.
  cfg, learned = selmatch.eval_rule(c, 0.05)
  assert (cfg.num_epochs(), cfg.lr, learned) == (c.eval_epochs, 0.01, True)
  c.eval_protocol = "selmatch"
  cfg, learned = selmatch.eval_rule(c, 0.1)
  assert (cfg.num_epochs(), cfg.lr, cfg.batch_size, cfg.schedule, learned) == \
      (500, 0.1, 128, "cosine_epoch", False)


def test_selmatch_run_summary_labels_its_loss_blocks_within_the_run(tmp_path):
  """500 logged iterations give six blocks of 84 (the last 80), every label inside steps 1-500; rows a
  longer run logged past ``steps`` stay out."""
  from experiments import selmatch
  log = jd.logs.MetricLogger(str(tmp_path / "logs"), tensorboard=False)
  for s in range(1, 521):
    log.write(s, {"loss": float(s), "sec": float(s)})
  log.close()
  text = selmatch.run_summary(str(tmp_path), 500)
  trend = text.split("loss by steps ")[1]
  assert [b.split(":")[0] for b in trend.split(", ")] == \
      ["1-84", "85-168", "169-252", "253-336", "337-420", "421-500"]
  assert trend.endswith("421-500: 460.500")  # the mean of steps 421..500, none after
  assert "500 iterations, 1 s each" in text


def tiny_sweep(workdir: str):
  """The SelMatch sweep's config at the smallest size that runs every stage: 4 + 2 held-out images
  per class, one ratio (IPC 2) with one alpha, one 3-epoch MLP expert, 2 MTT iterations, two windows."""
  c = load_config("selmatch_sweep_fmnist.py")
  override(c, {"per_class": 4, "holdout_per_class": 2, "ratios": (0.5,), "alphas": ((0.5,),),
               "model": "mlp", "model_kwargs": {"width": 8}, "eval_model": "mlp",
               "eval_model_kwargs": {"width": 8}, "eval_epochs": 1, "num_seeds": 1,
               "experts.num": 1, "experts.epochs": 3, "experts.batch_size": 8,
               "mtt.syn_steps": 2, "mtt.expert_epochs": 1, "mtt.max_start_epoch": 2,
               "mtt.batch_syn": 0, "mtt.steps": 2, "mtt.checkpoint_every": 1,
               "search.betas": (0.0, 0.5), "search.eval_epochs": 1, "search.num_seeds": 1,
               "workdir": workdir, "out": os.path.join(workdir, "sweep.md"), "plot": False})
  return c


@pytest.mark.slow
def test_selmatch_sweep_runs_every_stage_and_resumes_from_its_caches(tmp_path):
  """``experiments.selmatch.run`` (the command's work) on real Fashion-MNIST: every set of the table
  is evaluated, SelMatch's frozen rows stay the window's, and a second run reads its caches and
  checkpoints back into the same table."""
  from experiments import selmatch
  c = tiny_sweep(str(tmp_path))
  first = selmatch.run(c)
  sets = [row.split(" | ")[1] for row in first["rows"][2:]]
  assert sets[0] == "random real" and sets[-3].startswith("MTT"), sets
  assert any(s.startswith("best window on held-out") for s in sets), sets
  assert sets[-2].startswith("SelMatch (alpha 0.5, beta") and sets[-2].endswith("combined aug"), sets
  assert sets[-1].endswith("DSA on every row"), sets
  assert "frozen rows bit-identical to the window after distillation: True" in first["text"]
  record = json.load(open(os.path.splitext(c.out)[0] + ".json"))
  assert len(record["expert_test_acc"]) == c.experts.num and record["eval_learned_lr"] is True
  assert [r["set"] for r in record["rows"]][0] == "random"
  assert {r["set"] for r in record["rows"]} == {"random", "window", "mtt", "selmatch"}
  assert all({"ratio", "alpha", "beta", "evaluator", "mean", "std"} <= set(r) for r in record["rows"])
  for grid in ("sweep_mtt_ipc2.png", "sweep_selmatch_ipc2_alpha0.5.png"):  # named after c.out
    assert os.path.exists(os.path.join(str(tmp_path), grid)), grid
  (tmp_path / "sweep_notes.md").write_text("# Notes\n\nRead by hand.\n")
  second = selmatch.run(c)
  assert second["rows"] == first["rows"]
  assert second["text"].endswith("\nRead by hand.") and "# Notes" not in second["text"]


# ----------------------------------------------------------------------------------------------------
# Refactor guard: three steps of every method from a fixed key reproduce recorded values
# ----------------------------------------------------------------------------------------------------

GOLDEN = os.path.join(os.path.dirname(__file__), "golden_steps.json")
GOLDEN_CONFIGS = ("dm_fmnist.py", "dc_fmnist.py", "dsa_fmnist.py", "idc_fmnist.py", "kip_fmnist.py",
                  "frepo_fmnist.py", "dd_fmnist.py", "mtt_fmnist.py", "datm_fmnist.py",
                  "selmatch_fmnist.py")


# Guard settings that keep three steps well conditioned (the shipped configs' ridge 1e-6 and Adam's
# eps 1e-8 make a few roundings flip an update's sign): ridges 1e-3, Adam eps 1e-3.
GUARD_OVERRIDES = {"kip_fmnist.py": {"kip_reg": 1e-3, "optimizer_kwargs.eps": 1e-3},
                   "frepo_fmnist.py": {"frepo_reg": 1e-3, "optimizer_kwargs.eps": 1e-3}}


def _three_steps(name, workdir, tiny_npz, monkeypatch, jitter=None, changes=None):
  """The guard's run of ``name``: (fingerprint, initial set); ``jitter(images)`` replaces the initial
  images, ``changes`` overrides config fields."""
  c = shrink(load_config(name), workdir, tiny_npz, mlp=True)
  c.distill_augment = "dsa"  # the methods that augment do (the others ignore it)
  override(c, {**GUARD_OVERRIDES.get(name, {}), **(changes or {})})
  monkeypatch.setattr(registry, "experts", fake_experts)
  monkeypatch.setattr(registry, "difficulty_scores",
                      lambda d, ids, e, *kind: np.cos(np.arange(len(data.y_train), dtype=np.float64)))
  data = registry.load_data(c)
  m = registry.build(c, data)
  init = m.init if jitter is None else m.init._replace(images=jnp.asarray(jitter(m.init.images)))
  d = jd.distill.Distiller(m.objective, m.optimizer, m.sampler,
                           mask=None if m.mask is None else jnp.asarray(m.mask), decode=m.decode)
  with jax.numpy_dtype_promotion("standard"):
    state, history = jd.distill.run(jax.random.key(7), init, d, 3, log_every=1, progress=False)
  return golden.fingerprint(state.syn, init, history), init


def _record(name: str, record: dict) -> None:
  """Writes one method's record into ``GOLDEN`` (locked: xdist workers record side by side)."""
  import fcntl
  import tempfile
  with open(os.path.join(tempfile.gettempdir(), "jaxdistill_golden_steps.lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    recorded = {}
    if os.path.exists(GOLDEN):
      with open(GOLDEN) as f:
        recorded = json.load(f)
    recorded[name] = record
    with open(GOLDEN + ".tmp", "w") as f:
      json.dump(recorded, f, indent=1, sort_keys=True)
    os.replace(GOLDEN + ".tmp", GOLDEN)


@pytest.mark.slow
@pytest.mark.parametrize("name", GOLDEN_CONFIGS)
def test_three_steps_reproduce_recorded_values(name, workdir, tiny_npz, cached_data, monkeypatch):
  """Refactor guard: each method's config (width-8 MLP, its own augmentation, untrained stand-in
  experts) runs three steps from a fixed key and matches the record in ``golden_steps.json``:
  bit-equal on the platform that recorded it, elsewhere within tolerances derived from the spread a
  one-ulp jitter of the initial images causes (``tests/golden.py``). ``JAXDISTILL_RECORD_GOLDEN=1``
  records anew (three runs per method): only for a change that is meant to move results, said in its
  commit."""
  got, init = _three_steps(name, workdir, tiny_npz, monkeypatch)
  if os.environ.get("JAXDISTILL_RECORD_GOLDEN"):
    spread = {k: 0.0 for k in got}
    for jitter in golden.ulp_jitters(init.images):
      moved, _ = _three_steps(name, workdir, tiny_npz, monkeypatch, jitter=lambda x, j=jitter: j)
      for k, v in golden.relative_deviation(moved, got).items():
        spread[k] = max(spread[k], v)
    _record(name, {"platform": golden.platform_key(), "values": got, "spread": spread})
  with open(GOLDEN) as f:
    recorded = json.load(f)
  assert name in recorded, f"No recorded values for {name}: run with JAXDISTILL_RECORD_GOLDEN=1."
  problems = golden.check(got, recorded[name], golden.platform_key())
  assert not problems, f"{name}:\n" + "\n".join(problems)


@pytest.mark.slow
def test_three_step_guard_catches_a_one_percent_change_off_the_recording_platform(
    workdir, tiny_npz, cached_data, monkeypatch):
  """The tolerances are tight enough to matter: DM with its image learning rate 1% higher fails the
  comparison made as on another platform, the unchanged run passes it."""
  with open(GOLDEN) as f:
    record = json.load(f)["dm_fmnist.py"]
  foreign = {**record["platform"], "cpu": "another CPU"}
  got, _ = _three_steps("dm_fmnist.py", workdir, tiny_npz, monkeypatch)
  assert golden.check(got, record, foreign) == []
  lr = load_config("dm_fmnist.py").optimizer_kwargs.learning_rate
  moved, _ = _three_steps("dm_fmnist.py", workdir, tiny_npz, monkeypatch,
                          changes={"optimizer_kwargs.learning_rate": 1.01 * lr})
  problems = golden.check(moved, record, foreign)
  assert any(p.startswith("images_update") for p in problems), problems


@pytest.mark.slow
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"),
                    reason="--xla_cpu_max_isa names x86 instruction sets")
def test_three_step_guard_holds_under_a_lower_instruction_set():
  """The record holds off the recording platform: the guard run again with XLA limited to SSE4.2
  (below any recorder's AVX / AVX2 / AVX-512), in a subprocess (XLA reads its flags at start)."""
  env = {k: v for k, v in os.environ.items() if k != "JAXDISTILL_RECORD_GOLDEN"}
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_max_isa=SSE4_2").strip()
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist",
                        "-m", "slow", "-k", "three_steps_reproduce", os.path.abspath(__file__)],
                       cwd=root, env=env, capture_output=True, text=True, timeout=1200)
  assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
  assert f"{len(GOLDEN_CONFIGS)} passed" in out.stdout, out.stdout[-2000:]


def test_guard_comparison_is_bit_exact_at_home_and_scaled_elsewhere():
  """``golden.check``: any difference fails on the recording platform; elsewhere a deviation within
  the spread-derived tolerance of a field's scale passes and a larger one fails."""
  syn0 = jd.SyntheticSet(jnp.ones((2, 2, 2, 1)), jnp.zeros((2,), jnp.int32))
  syn = syn0._replace(images=syn0.images.at[0].add(0.5))
  fp = golden.fingerprint(syn, syn0, [{"loss": 2.0}])
  assert fp["images_update_abs_sum"] == 2.0 and fp["images_sum"] == 10.0 and "labels_sum" not in fp
  home = {"cpu": "x"}
  record = {"platform": home, "values": fp, "spread": {k: 1e-7 for k in fp}}
  near = dict(fp, images_update_sum=fp["images_update_sum"] + 1e-6)  # 5e-7 of its scale, 2.0
  far = dict(fp, images_update_sum=fp["images_update_sum"] + 1e-4)
  assert golden.check(fp, record, home) == []
  assert golden.check(near, record, home)  # bit-equality at home
  assert golden.check(near, record, {"cpu": "y"}) == []
  assert [p.split(":")[0] for p in golden.check(far, record, {"cpu": "y"})] == ["images_update_sum"]
  assert golden.check({"loss": [2.0]}, record, home)[0].startswith("fields differ")


def test_baseline_identity_fails_closed():
  """Runs that differ only in distillation fields share a random-real baseline; any other field,
  a new one included, and every evaluator's own settings give another."""
  from experiments.distill import _baseline_id
  c = load_config("kip_fmnist.py")
  base = _baseline_id(c, "protocol")
  c2 = load_config("kip_fmnist.py")
  c2.steps, c2.optimizer_kwargs.learning_rate, c2.method = 7, 0.5, "dm"
  assert _baseline_id(c2, "protocol") == base
  assert _baseline_id(c, "krr") != base
  for change in ({"kip_depth": 2}, {"eval_epochs": 5}, {"ipc": 1}, {"model_kwargs.width": 3},
                 {"a_new_field": 1}, {"data_dir": "/other/fashion_mnist.npz"}):
    assert _baseline_id(override(load_config("kip_fmnist.py"), change), "protocol") != base, change


def test_the_random_baselines_coverage_halves_follow_selmatchs_difficulty():
  from experiments.distill import _baseline_id
  c = load_config("selmatch_fmnist.py")
  other = override(load_config("selmatch_fmnist.py"), {"selmatch.difficulty": "forgetting"})
  assert _baseline_id(c, "coverage") != _baseline_id(other, "coverage")
  assert _baseline_id(c, "protocol") == _baseline_id(other, "protocol")  # accuracy: no halves


def test_fields_a_method_never_reads_leave_its_run_identity():
  """KIP and FRePo bring their own kernel / network: the shared ``model`` fields neither enter their
  run identity (a change would block a resume and change nothing) nor describe them; DM's do."""
  from experiments import registry
  for name in ("kip_fmnist.py", "frepo_fmnist.py"):
    c = load_config(name)
    other = override(load_config(name), {"model_kwargs.width": 3})
    ident = registry.run_identity(c)
    assert ident == registry.run_identity(other) and "model" not in ident
  dm = load_config("dm_fmnist.py")
  assert registry.run_identity(dm) != registry.run_identity(override(load_config("dm_fmnist.py"),
                                                                     {"model_kwargs.width": 3}))


def test_loop_fields_each_fall_back_to_the_reference_alone_and_experts_train_at_mtts_rate(monkeypatch):
  """``inner_loop`` set alone is used (it was dropped unless ``outer_loop`` was set too); the paper
  configs' experts train at MTT's buffer rate 0.01 whatever the synthetic step size starts at."""
  from experiments import registry
  from experiments.configs import mtt_cifar10, selmatch_cifar10
  seen = []
  monkeypatch.setattr(jd.objectives, "gradient_matching",
                      lambda net, k, outer, inner, **kw: seen.append((outer, inner)))
  data = jd.types.Dataset("fashion_mnist", np.zeros((1, 28, 28, 1), np.float32), np.zeros(1, np.int32),
                          np.zeros((1, 28, 28, 1), np.float32), np.zeros(1, np.int32), 10,
                          tuple("abcdefghij"), (0.0,), (1.0,))
  for change in ({}, {"inner_loop": 5}, {"outer_loop": 3}, {"outer_loop": 3, "inner_loop": 5}):
    registry.gradient_matching(override(load_config("dc_fmnist.py"), change), data, use_dsa=False)
  assert seen == [(10, 50), (10, 5), (3, 50), (3, 5)]
  for c in (mtt_cifar10.get_config("10"), mtt_cifar10.get_config("50"), selmatch_cifar10.get_config("500")):
    assert c.experts.lr == 0.01 and c.mtt.lr_teacher == 0.001


def test_cache_names_ignore_rounding_only_fields():
  """Cached results stay valid across ``microbatch`` (float rounding only), not across real changes;
  expert directories' identity ignores it as well."""
  from experiments.common import ident
  cfg = jd.evaluate.EvalConfig(epochs=300)
  assert ident("set", cfg) == ident("set", cfg._replace(microbatch=0))
  assert ident("set", cfg) != ident("set", cfg._replace(lr=0.02))
  assert ident("set", cfg) != ident("other", cfg)
  e = jd.experts.ExpertConfig()
  assert e.describe() == e._replace(microbatch=0).describe() and "microbatch" not in e.describe()


def test_seconds_per_step_counts_steps_between_batched_metric_reads():
  from experiments.distill import _sec_per_step
  # Steps 1-10 read together at 30 s (with compilation), 11-20 at 50 s, 21-30 at 70 s.
  history = [{"step": s, "sec": 30.0 + 20.0 * ((s - 1) // 10)} for s in range(1, 31)]
  assert _sec_per_step(history) == "2.00 s/step after compilation"
  assert "not measured" in _sec_per_step(history[:10])


# ----------------------------------------------------------------------------------------------------
# A method of one's own: a module outside the package, found by its import path
# ----------------------------------------------------------------------------------------------------

TOY_METHOD = '''"""Toy method: per class, the pixel mean of the synthetic images matches the real batch's."""
import jax.numpy as jnp

from experiments import registry as r
from jaxdistill.objectives.base import Objective, keep_state, no_state, pmean

DISTILL_FIELDS = ("toy_weight",)


def build(c, data):
  k = data.num_classes

  def loss(syn, batch, key, state, axis_name=None):
    real = pmean(batch["images"].mean(axis=1), axis_name)
    fake = syn.images.reshape(k, -1, *syn.images.shape[1:]).mean(axis=1)
    return c.toy_weight * jnp.sum((real - fake) ** 2), {}

  obj = Objective(no_state, loss, keep_state, batch_axis=1, name="toy_mean_matching")
  return r.Method(obj, r.optimizer(c), r.class_sampler(c, data), r.random_init(c, data),
                  evaluators=r.evaluators(c, data))
'''

EXPERIMENT_MODULES = sorted(os.path.basename(p)[:-3] for p in glob.glob(
    os.path.join(os.path.dirname(__file__), "..", "experiments", "*.py")) if not p.endswith("__init__.py"))


def test_every_experiment_module_imports_beside_the_others_and_a_script_asks_for_its_config():
  """All experiment modules import into one process (none defines an absl flag at import, so two
  ``--config`` flags never collide), and a script started without ``--config`` stops with a usage error
  that names the flag."""
  code = ("import sys\n" + "".join(f"import experiments.{m}\n" for m in EXPERIMENT_MODULES) +
          "from experiments.common import run_script\nsys.argv = ['distill']\nrun_script(print)\n")
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                     cwd=os.path.join(os.path.dirname(__file__), ".."))
  assert "DuplicateFlagError" not in r.stderr, r.stderr[-2000:]
  assert r.returncode != 0 and "--config is required" in r.stderr + r.stdout, r.stderr[-2000:]


TOY_CONFIG = '''from experiments.configs.common import base


def get_config():
  c = base("toy_method", ipc=1)
  c.toy_weight = 1.0
  c.max_per_class = 10
  c.steps, c.batch_real, c.checkpoint_every = 20, 10, 10  # every real image of the subset
  c.optimizer_kwargs.learning_rate = 0.1
  c.eval_models, c.eval_model_kwargs = ("mlp",), {"mlp": {"width": 8}}
  c.eval_epochs, c.eval_augment, c.num_seeds, c.progress = 1, "none", 1, False
  return c
'''


def _toy_module(tmp_path, monkeypatch) -> str:
  (tmp_path / "toy_method.py").write_text(TOY_METHOD)
  (tmp_path / "toy_config.py").write_text(TOY_CONFIG)
  (tmp_path / "no_build.py").write_text("X = 1\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  return str(tmp_path)


def test_a_method_module_of_ones_own_builds_by_import_path(tmp_path, monkeypatch):
  """``c.method`` names a module outside ``experiments/methods`` by import path; its
  ``DISTILL_FIELDS`` leave the baseline's identity; unknown paths and modules without ``build`` are
  refused by name."""
  from experiments.distill import _baseline_id
  _toy_module(tmp_path, monkeypatch)
  c = load_config("dm_fmnist.py")
  override(c, {"method": "toy_method", "toy_weight": 1.0, "max_per_class": 2, "batch_real": 2, "ipc": 1})
  data = jd.data.load("fashion_mnist", max_per_class=2, key=jax.random.key(0))
  m = registry.build(c, data)
  assert m.objective.name == "toy_mean_matching" and set(m.evaluators) == {"protocol"}
  toy = lambda method, weight: _baseline_id(override(
      load_config("dm_fmnist.py"), {"method": method, "toy_weight": weight}), "protocol")
  assert toy("toy_method", 1.0) == toy("toy_method", 2.0)  # declared: distillation only
  assert toy("dm", 1.0) != toy("dm", 2.0)  # not DM's: part of its baseline's identity
  for name, match in (("no_such_package.method", "Unknown method"), ("no_build", "no build"),
                      ("", "Unknown method")):
    with pytest.raises(ValueError, match=match):
      registry.method_module(name)
  c.evals = ("protocol", "krr")
  with pytest.raises(ValueError, match="offers: protocol"):
    registry.build(c, data)


@pytest.mark.slow
def test_a_method_module_of_ones_own_runs_through_the_cli(tmp_path, monkeypatch):
  """The toy method, in a temporary module, distills real Fashion-MNIST through
  ``python -m experiments.distill``: its loss falls, the run is evaluated against random real images
  and its results section is written."""
  toy_dir = _toy_module(tmp_path, monkeypatch)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([toy_dir, root]))
  results = tmp_path / "results.md"
  out = subprocess.run([sys.executable, "-m", "experiments.distill",
                        f"--config={tmp_path / 'toy_config.py'}", f"--config.workdir={tmp_path / 'runs'}",
                        f"--config.results={results}"], cwd=root, env=env, capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  assert "toy_method_fashion_mnist_ipc1 [protocol] mlp: distilled" in out.stdout, out.stdout[-2000:]
  losses = [h["loss"] for h in jd.logs.read_metrics(
      str(tmp_path / "runs" / "toy_method_fashion_mnist_ipc1" / "logs"))]
  assert len(losses) == 2 and losses[-1] < losses[0], losses  # logged at steps 10 and 20
  assert "## TOY_METHOD, fashion_mnist, IPC 1" in results.read_text()


def test_paper_configs_hold_their_protocol_and_refuse_a_changed_field():
  """``paper_fmnist.py:<method>,<ipc>`` evaluates under the paper's protocol; a field changed after
  ``with_protocol`` is refused by name; methods without a paper-budget setting here say why."""
  c = load_config("paper_fmnist.py", "dc,1")
  assert (c.steps, c.batch_real, c.model_kwargs.width, c.optimizer_kwargs.learning_rate) == \
      (1000, 256, 128, 0.1)
  cfg = registry.eval_config(c)
  assert (cfg.num_epochs(), cfg.augment, c.num_seeds) == (300, "none", 20)
  assert load_config("paper_fmnist.py", "dsa,10").steps == 10000
  assert registry.eval_config(load_config("paper_fmnist.py", "dm,1")).augment == "dsa"
  c.eval_epochs = 1000
  with pytest.raises(ValueError, match=r"eval_protocol='dc'.*epochs: 1000 \(protocol: 300\)"):
    registry.eval_config(c)
  c = load_config("paper_fmnist.py", "dsa,1")
  c.eval_model_kwargs.convnet.width = 32
  with pytest.raises(ValueError, match=r"eval_model_kwargs.convnet.width: 32 \(protocol: 128\)"):
    registry.eval_config(c)
  c.eval_protocol = ""  # no protocol named: the fields are the protocol
  assert registry.eval_config(c).augment == "dsa"
  idc = load_config("paper_fmnist.py", "idc,1")
  assert (idc.steps, idc.batch_real, idc.idc_factor, idc.idc_objective, idc.eval_protocol) == \
      (200000, 64, 2, "idc", "idc")
  # IDC's 1e-4 x (1 / 10) x (28 / 32)^2 in pixel units, for images stored divided by std 0.353.
  np.testing.assert_allclose(idc.optimizer_kwargs.learning_rate, 7.65625e-6 / 0.353 ** 2, rtol=1e-6)
  with pytest.raises(ValueError, match="KIP's finite-ConvNet"):
    load_config("paper_fmnist.py", "kip,1")
  with pytest.raises(ValueError, match="IPC 7"):
    load_config("paper_fmnist.py", "dc,7")
  from experiments.configs.common import base, with_protocol
  sm = with_protocol(base("selmatch", 15), "selmatch", ratio=0.05)
  assert (registry.eval_config(sm).num_epochs(), tuple(sm.eval_models), sm.num_seeds) == \
      (1000, ("resnet18bn",), 5)
  assert registry.eval_config(with_protocol(base("idc", 1), "idc")).mix == "cutmix"
  # The protocol's name is not part of a run's identity, nor of its random-real baseline's.
  plain = load_config("paper_fmnist.py", "dc,1")
  plain.eval_protocol = ""
  assert registry.run_identity(plain) == registry.run_identity(load_config("paper_fmnist.py", "dc,1"))


def test_paper_table_merge_keeps_recorded_rows_and_their_recording_when_read_back_unchanged():
  """A row read back with the numbers it was recorded with keeps who recorded it and when; a row
  with new numbers replaces the recorded one; a new row comes after the recorded ones."""
  from experiments import paper_fmnist
  row = lambda m, acc, by: {"method": m, "ipc": 1, "steps": 1000, "ours_mean": acc,
                            "curve": [{"steps": 1000, "mean": acc}], "recorded_by": by, "date": by}
  recorded = [row("dc", 70.73, "first"), row("dsa", 70.35, "first"), row("idc", 80.0, "first")]
  now = [row("dsa", 70.9, "second"), row("dc", 70.73, "second"), row("dm", 60.0, "second")]
  out = paper_fmnist.merged(recorded, now)
  assert [(r["method"], r["ours_mean"], r["recorded_by"]) for r in out] == [
      ("dc", 70.73, "first"), ("dsa", 70.9, "second"), ("idc", 80.0, "first"), ("dm", 60.0, "second")]
  assert not paper_fmnist.same_numbers(row("dc", 70.73, "a"), dict(row("dc", 70.73, "a"), steps=900))


def test_paper_table_plot_draws_every_row_with_its_published_mean_and_budget(tmp_path, monkeypatch):
  """The table's plot: one line per row (log iterations, fractional ones included), its published mean
  and the paper's budget, written as a PNG."""
  from experiments import paper_fmnist
  import matplotlib.axes
  marks = {"axhline": [], "axvline": []}

  def recording(name):
    orig = getattr(matplotlib.axes.Axes, name)
    return lambda self, x, *a, **kw: marks[name].append(x) or orig(self, x, *a, **kw)
  for name in marks:
    monkeypatch.setattr(matplotlib.axes.Axes, name, recording(name))
  rows = [{"method": "dc", "ipc": 10, "published_mean": 82.3,
           "curve": [{"iterations": 2, "mean": 76.4, "std": 0.2},
                     {"iterations": 10, "mean": 78.7, "std": 0.3}]},
          {"method": "idc", "ipc": 1, "published_mean": 81.0,
           "curve": [{"iterations": 0.02, "mean": 40.0, "std": 1.0}]}]
  path = str(tmp_path / "table.png")
  paper_fmnist.plot(path, rows)
  assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  assert marks == {"axhline": [82.3, 81.0], "axvline": [1000, 2000]}


@pytest.mark.slow
def test_paper_table_runs_its_rows_resumes_from_its_caches_and_writes_its_files(tmp_path, monkeypatch):
  """``scripts/paper_fmnist.sh`` (its accelerator form, rows overridden) at test size on real
  Fashion-MNIST: every row distilled and evaluated at its curve point and its end, the JSON has the
  issue's fields; then ``experiments.paper_fmnist.run`` reads everything back from the checkpoints and
  caches (no distillation, no evaluation) into the same table."""
  from experiments import paper_fmnist
  from experiments.configs import paper_fmnist_table
  settings = {"rows": "dc:1@2, dm:1, idc:1", "tiny": True, "curve_points": 1, "curve_networks": 1,
              "workdir": str(tmp_path / "runs"), "results": str(tmp_path / "paper"), "progress": False,
              "plot": False}
  root = os.path.join(os.path.dirname(__file__), "..")
  out = subprocess.run(["bash", os.path.join(root, "scripts", "paper_fmnist.sh")] +
                       [f"--config.{k}={v}" for k, v in settings.items()],
                       env={**os.environ, "ACCELERATOR": "1"}, capture_output=True, text=True,
                       timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = json.load(open(str(tmp_path / "paper.json")))
  assert [(r["method"], r["ipc"], r["steps"], r["budget"]) for r in rows] == \
      [("dc", 1, 2, "reduced"), ("dm", 1, 2, "reduced"), ("idc", 1, 2, "reduced")]
  for r in rows:
    assert {"method", "ipc", "budget", "iterations", "eval_protocol", "ours_mean", "ours_std",
            "published_mean", "published_std", "source"} <= set(r)
    assert [p["steps"] for p in r["curve"]] == [1, 2] and len(r["sessions"]) == 2
    assert 0 <= r["ours_mean"] <= 100 and r["distill_seconds"] > 0
  assert rows[0]["published_mean"] == 70.5 and rows[1]["published_mean"] is None
  assert rows[2]["published_mean"] == 81.0 and rows[2]["iterations"] == 2 / 100
  monkeypatch.setattr(distill, "run", lambda c: pytest.fail("a cached row was recomputed"))
  (tmp_path / "paper_notes.md").write_text("# Notes\n\nSplit by hand.\n")
  c = paper_fmnist_table.get_config()
  c.update(settings)
  again = paper_fmnist.run(c)
  who = lambda r: {k: v for k, v in r.items() if k not in ("recorded_by", "date")}
  assert [who(r) for r in json.loads(json.dumps(again["rows"]))] == [who(r) for r in rows]
  assert "--config.rows=dc:1@2, dm:1, idc:1" in rows[1]["recorded_by"]
  md = open(str(tmp_path / "paper.md")).read()
  assert "| DC | 1 | reduced | 2 |" in md and md.endswith("\nSplit by hand.\n") and "# Notes" not in md
  # A command with fewer rows writes them into the table and keeps the others as recorded.
  first = json.load(open(str(tmp_path / "paper.json")))
  c.rows = "idc:1"
  assert [r["method"] for r in paper_fmnist.run(c)["rows"]] == ["idc"]
  table = json.load(open(str(tmp_path / "paper.json")))
  assert [r["method"] for r in table] == ["dc", "dm", "idc"] and table[:2] == first[:2]
  assert f"- DM IPC 1 (2 steps): {first[1]['date']}, `{first[1]['recorded_by']}`" in \
      open(str(tmp_path / "paper.md")).read()
  (tmp_path / "paper.json").write_text('{"not": "a table"}')
  with pytest.raises(ValueError, match="is not a results file of this table"):
    paper_fmnist.run(c)
  c.rows = "kip:1"
  with pytest.raises(ValueError, match="Bad row 'kip:1'"):
    paper_fmnist.rows_of(c)


MINIMAX_UNET_TINY = {
    "model.width": 8, "model.mults": (1, 2), "model.attn_levels": (1,), "model.heads": 2,
    "model.groups": 4, "pretrain.steps": 2, "pretrain.batch_size": 8, "pretrain.warmup": 1,
    "pretrain.checkpoint_every": 1, "pretrain.quality_every": 1, "holdout": 100,
    "sweep": ({"steps": 2, "cfg_scale": 1.0}, {"steps": 3, "eta": 0.0, "cfg_scale": 2.0}),
    "sweep_ipc": 1, "finetune.steps": 1, "finetune.batch_size": 8, "finetune.memory_size": 4,
    "finetune.checkpoint_every": 1, "autoencoder.width": 4, "autoencoder.steps": 2,
    "autoencoder.batch_size": 8, "sample.steps": 2, "sample.batch_size": 10, "ipcs": (1,),
    "eval_epochs": 1, "eval_model_kwargs.width": 8, "num_seeds": 1, "judge.epochs": 1,
    "judge.model_kwargs.width": 8, "judge.min_accuracy": 0.0, "control": False, "max_per_class": 30}


def test_minimax_refuses_choices_without_held_out_images_and_unknown_sampler_fields():
  from experiments import minimax
  c = load_config("minimax_unet_fmnist.py")
  assert c.model_kind == "unet" and c.holdout > 0 and len(c.sweep) == 8
  minimax.check_config(c)
  for changes, match in [({"holdout": 0}, "held-out"), ({"model_kind": "vae"}, "model_kind"),
                         ({"sweep": ({"guidance": 2.0},)}, "unknown sampler fields"),
                         ({"holdout": -1}, "holdout"), ({"finetune.space": "pixels"}, "space"),
                         ({"sweep_agreement_slack": -0.1}, "sweep_agreement_slack")]:
    bad = load_config("minimax_unet_fmnist.py")
    override(bad, changes)
    with pytest.raises(ValueError, match=match):
      minimax.check_config(bad)
  cpu = load_config("minimax_unet_cpu_fmnist.py")  # the CPU-sized UNet run: same design, smaller
  minimax.check_config(cpu)
  assert cpu.holdout > 0 and cpu.pretrain.quality_every and len(cpu.sweep) == 8
  assert cpu.workdir != c.workdir and cpu.results != c.results and cpu.grid_prefix != c.grid_prefix
  default = load_config("minimax_fmnist.py")  # the DiT run: no sweep, no held-out images
  minimax.check_config(default)
  assert default.holdout == 0 and not default.sweep and default.model_kind == "dit"
  assert set(minimax._pretrain_config(default)) == {"dataset", "seed", "model", "schedule",
                                                    "num_timesteps", "pretrain"}
  assert "quality_every" not in minimax._pretrain_config(default)["pretrain"]
  # the guidance ablation of the CPU run: its models, its sampler fixed (no sweep), no control
  g2 = load_config("minimax_unet_cpu_fmnist_guidance.py", "2")
  minimax.check_config(g2)
  assert g2.workdir == cpu.workdir and not g2.sweep and not g2.control
  assert (g2.sample.cfg_scale, g2.sample.eta, g2.sample.steps) == (2.0, 0.0, 50)
  assert minimax._pretrain_config(g2) == minimax._pretrain_config(cpu)
  assert minimax._finetune_config(g2) == minimax._finetune_config(cpu)
  with pytest.raises(ValueError, match="guidance"):
    load_config("minimax_unet_cpu_fmnist_guidance.py", "0")
  # the lambdas ablation: its own fine-tuning directory and sets (the lambdas name its samples)
  l10 = load_config("minimax_unet_cpu_fmnist_lambdas.py", "10")
  minimax.check_config(l10)
  assert l10.workdir == cpu.workdir and l10.finetune_suffix and not cpu.finetune_suffix
  assert (l10.finetune.lambda_pos, l10.finetune.lambda_neg) == pytest.approx((0.02, 0.08))
  assert minimax._pretrain_config(l10) == minimax._pretrain_config(cpu)
  assert minimax._finetune_config(l10) != minimax._finetune_config(cpu)
  for bad_suffix in ("/x", "../x", "a b"):
    bad = load_config("minimax_unet_cpu_fmnist_lambdas.py", "10")
    bad.finetune_suffix = bad_suffix
    with pytest.raises(ValueError, match="finetune_suffix"):
      minimax.check_config(bad)
  # five runs, five records: no run's results, JSON or grids overwrite another's
  runs = (c, cpu, default, g2, l10)
  assert len({x.results for x in runs}) == 5 and len({x.grid_prefix for x in runs}) == 5
  assert c.finetune.space == "autoencoder" and default.finetune.space == "model"


def test_minimax_sweep_picks_the_closest_sampler_among_those_that_keep_their_labels():
  from experiments import minimax
  q = lambda agree, fid: {"class_agreement": agree, "fid_like": fid}
  rows = [q(0.90, 40.0), q(0.80, 30.0), q(0.89, 38.0), q(0.91, 45.0)]
  assert minimax.pick_sampler(rows, 0.02) == 2  # 0.80 is too far below the best 0.91
  assert minimax.pick_sampler(rows, 0.0) == 3  # the best agreement alone
  assert minimax.pick_sampler(rows, 1.0) == 1  # FID-style alone
  assert minimax.pick_sampler([q(0.9, 40.0), q(0.9, 40.0)], 0.02) == 0  # ties: the first
  # 24 and 28 of 200 images differ by exactly 0.02, though 28 / 200 - 0.02 > 24 / 200 in floats
  assert minimax.pick_sampler([q(28 / 200, 40.0), q(24 / 200, 30.0)], 0.02) == 1
  assert minimax.pick_sampler([q(28 / 200, 40.0), q(23 / 200, 30.0)], 0.02) == 0


@pytest.mark.slow
def test_minimax_unet_run_chooses_its_sampler_on_held_out_images_and_resumes(tmp_path):
  """The UNet configuration at test size: quality reports at pretraining checkpoints and a sampler
  sweep, both against held-out training images; the chosen sampler has the lowest FID-style distance;
  a second run reads every stage back."""
  from experiments import minimax
  c = load_config("minimax_unet_fmnist.py")
  override(c, dict(MINIMAX_UNET_TINY, workdir=str(tmp_path / "runs"),
                   results=str(tmp_path / "unet.md"), dm_dir=str(tmp_path / "no_dm")))
  with jax.numpy_dtype_promotion("standard"):
    table = minimax.run(c)
  assert set(table) == {("random real", 1), ("vanilla", 1), ("minimax", 1)}
  record = json.load(open(str(tmp_path / "unet.json")))
  assert record["model_kind"] == "unet"
  assert [r["step"] for r in record["checkpoint_quality"]] == [1, 2]
  assert len(record["sweep"]) == 2
  best = record["sweep"][minimax.pick_sampler(record["sweep"], c.sweep_agreement_slack)]
  assert record["sampler"] == best["sampler"]
  # real training images as many as a sweep sample: the floor the held-out reports are read against
  assert 0.0 <= record["held_out_real_floor"]["class_agreement"] <= 1.0
  assert record["held_out_real_floor"]["fid_like"] >= 0.0
  md = open(str(tmp_path / "unet_run.md")).read()
  assert "Sampler sweep" in md and "Pretraining checkpoints" in md
  assert md.count("real training images, as many (the floor)") == 2
  assert os.path.exists(str(tmp_path / "minimax_unet_fmnist_minimax_ipc1.png"))
  assert len(os.listdir(str(tmp_path / "runs" / "autoencoder"))) == 2  # its weights and record
  with jax.numpy_dtype_promotion("standard"):
    again = minimax.run(c)
  assert json.load(open(str(tmp_path / "unet.json"))) == record
  assert {k: v["quality"] for k, v in again.items()} == {k: v["quality"] for k, v in table.items()}


@pytest.mark.slow
def test_minimax_runs_every_stage_at_test_size_with_its_quality_report(tmp_path):
  """``experiments.minimax`` end to end at test size on real Fashion-MNIST: pretraining, fine-tuning,
  sampling, evaluation and the quality report of every set, its results and JSON written; a second
  run reads everything back (the judge from its file)."""
  from experiments import minimax
  c = load_config("minimax_fmnist.py")
  override(c, {"model.width": 16, "model.depth": 1, "model.heads": 2, "pretrain.steps": 2,
               "pretrain.batch_size": 8, "pretrain.warmup": 1, "pretrain.checkpoint_every": 2,
               "finetune.steps": 2, "finetune.batch_size": 8, "finetune.memory_size": 4,
               "finetune.checkpoint_every": 2, "sample.steps": 2, "sample.batch_size": 10,
               "ipcs": (1,), "eval_epochs": 1, "eval_model_kwargs.width": 8, "num_seeds": 1,
               "judge.epochs": 1, "judge.model_kwargs.width": 8, "judge.min_accuracy": 0.0,
               "control": False, "max_per_class": 10, "workdir": str(tmp_path / "runs"),
               "results": str(tmp_path / "minimax.md"), "dm_dir": str(tmp_path / "no_dm")})
  with jax.numpy_dtype_promotion("standard"):  # optax's Adam bias correction mixes int and float
    table = minimax.run(c)
  assert set(table) == {("random real", 1), ("vanilla", 1), ("minimax", 1)}
  for row in table.values():
    q = row["quality"]
    assert 0.0 <= q["class_agreement"] <= 1.0 and np.isfinite(q["fid_like"])
  # Random real images are training images (distance 0 to the nearest); generated ones are not.
  assert table[("random real", 1)]["quality"]["nearest_real_ratio"] == 0.0
  assert table[("vanilla", 1)]["quality"]["nearest_real_ratio"] > 0.0
  record = json.load(open(str(tmp_path / "minimax.json")))
  assert set(record["quality"]) == {"random_real", "vanilla", "minimax"}
  assert {r["set"] for r in record["accuracy"]} == {"random_real", "vanilla", "minimax"}
  assert "class agreement" in open(str(tmp_path / "minimax_run.md")).read()
  with jax.numpy_dtype_promotion("standard"):
    again = minimax.run(c)
    assert {k: v["quality"] for k, v in again.items()} == {k: v["quality"] for k, v in table.items()}
    # The sets scored again from their 8-bit grids (here the whole set: 1 image per class): the
    # same report within the quantization, the run's own random set (same key: read from its cache).
    from experiments import minimax_grids
    grids = minimax_grids.run(c)
    q_run = {(k[0].replace(" ", "_"), k[1]): v["quality"] for k, v in table.items()}
    assert grids["quality"]["random_real"]["1"]["fid_like"] == q_run[("random_real", 1)]["fid_like"]
    for name in ("vanilla", "minimax"):
      g, r = grids["quality"][name]["1"], q_run[(name, 1)]
      assert g["images_scored"] == 10 and abs(g["class_agreement"] - r["class_agreement"]) <= 0.1
      np.testing.assert_allclose(g["fid_like"], r["fid_like"], rtol=0.05)
    assert {(a["set"], a["ipc"]) for a in grids["accuracy"]} == set(q_run)
    for a in grids["accuracy"]:
      assert abs(a["mean"] - next(x for x in record["accuracy"]
                                  if x["set"] == a["set"])["mean"]) <= 0.005
    assert json.load(open(str(tmp_path / "minimax.json"))) == grids
    # Another sampler samples anew (the sets were read back under the old one's name before).
    samples = lambda: sorted(f for f in os.listdir(str(tmp_path / "runs")) if f.endswith(".npz"))
    before = samples()
    c.sample.cfg_scale = 1.0
    minimax.run(c)
    assert len(samples()) == len(before) + 2 and set(before) < set(samples())  # vanilla and minimax
    c.judge.min_accuracy = 0.99
    with pytest.raises(ValueError, match="min_accuracy"):
      minimax.run(c)


def test_selmatch_merge_joins_ratios_of_one_study_and_refuses_mixed_ones(tmp_path):
  from experiments import selmatch_merge
  row = lambda ratio, kind: {"set": kind, "ratio": ratio, "alpha": None, "beta": None,
                             "evaluator": "convnet, dsa", "mean": 80.0, "std": 0.1}
  def rec(name, rows, accs=(86.0, 85.0), learned=False):
    path = str(tmp_path / name)
    json.dump({"expert_test_acc": list(accs), "eval_learned_lr": learned, "rows": rows},
              open(path, "w"))
    return path
  a = rec("study.json", [row(0.1, "random"), row(0.1, "mtt")])
  b = rec("study_30pct.json", [row(0.3, "random"), row(0.3, "selmatch")])
  selmatch_merge.main([a, a, b])  # written over one of its inputs
  merged = json.load(open(a))
  assert [(r["ratio"], r["set"], r["source"]) for r in merged["rows"]] == [
      (0.1, "random", "study.md"), (0.1, "mtt", "study.md"), (0.3, "random", "study_30pct.md"),
      (0.3, "selmatch", "study_30pct.md")]
  combined = lambda ratio, alpha, mean: {**row(ratio, "selmatch"), "alpha": alpha, "mean": mean,
                                         "evaluator": "convnet, combined aug"}
  lines = selmatch_merge.curves(merged["rows"] + [
      combined(0.3, 0.1, 81.0), combined(0.3, 0.6, 82.0), combined(0.1, 0.2, 79.0),
      {**row(0.3, "window"), "evaluator": "convnet, dsa, beta chosen on test"}])
  assert lines["random real"] == ([10.0, 30.0], [80.0, 80.0], [0.1, 0.1])
  assert lines["MTT"][0] == [10.0] and lines["best window (chosen on test)"][0] == [30.0]
  # each ratio's first alpha makes one line; the row evaluated with DSA alone is not plotted
  assert lines["SelMatch, each ratio's first alpha (combined aug)"][:2] == ([10.0, 30.0], [79.0, 81.0])
  assert lines["SelMatch, alpha 0.6 (combined aug)"][:2] == ([30.0], [82.0])
  assert len([k for k in lines if k.startswith("SelMatch")]) == 2
  with pytest.raises(ValueError, match="recorded in both"):
    selmatch_merge.merge([a, b])
  with pytest.raises(ValueError, match="other experts"):
    selmatch_merge.merge([rec("c.json", [row(0.1, "mtt")]), rec("d.json", [row(0.2, "mtt")], (1.0,))])
  with pytest.raises(ValueError, match="not one protocol"):
    selmatch_merge.merge([rec("e.json", [row(0.1, "mtt")]),
                          rec("f.json", [row(0.2, "mtt")], learned=True)])


def test_methods_start_where_their_code_does_unless_told_otherwise(cached_data):
  """c.init: DC's and DD's code start from standard normal noise, DSA's README command and DM from
  real images; "real" / "noise" override it, anything else is refused."""
  c = load_config("dd_fmnist.py")
  override(c, {"max_per_class": 10, "ipc": 2})
  data = registry.load_data(c)
  real = registry.random_init(c, data)
  del c["init"]
  for default in ("noise", "real"):
    got = registry.initial_set(c, data, default)
    np.testing.assert_array_equal(got.labels, real.labels)
    x = np.asarray(got.images)
    if default == "real":
      np.testing.assert_array_equal(x, np.asarray(real.images))
    else:
      assert abs(x.mean()) < 0.1 and abs(x.std() - 1) < 0.1 and not np.allclose(x, real.images)
  c.init = "real"
  np.testing.assert_array_equal(registry.initial_set(c, data, "noise").images, real.images)
  c.init = "zeros"
  with pytest.raises(ValueError, match="Unknown init"):
    registry.initial_set(c, data, "noise")
  assert load_config("dd_fmnist.py").init == "noise"
  assert load_config("dc_cifar10.py", 10).init == "noise" and load_config("dsa_cifar10.py", 10).init == "real"


def test_datm_pix_init_real_takes_random_real_images_and_one_experts_logits(cached_data, monkeypatch):
  from experiments.methods import datm
  c = shrink(load_config("datm_fmnist.py"), "/tmp/unused_workdir", "", mlp=True)
  monkeypatch.setattr(registry, "experts", fake_experts)
  data = registry.load_data(c)
  c.datm.pix_init = "real"
  m = datm.build(c, data)
  np.testing.assert_array_equal(m.init.images, registry.random_init(c, data).images)
  assert m.init.labels.ndim == 2
  c.datm.pix_init = "noise"
  with pytest.raises(ValueError, match="Unknown datm.pix_init"):
    datm.build(c, data)
  assert load_config("datm_cifar100.py", 50).datm.pix_init == "real"
  assert load_config("datm_cifar100.py", 10).datm.pix_init == "samples_predicted_correctly"


def test_fields_added_later_keep_recorded_runs_resumable_at_their_earlier_behaviour():
  """``init="real"`` and ``kip_learn_labels=True`` reproduce the runs recorded before the fields
  existed: they stay out of the run identity at those values and enter it at others; a method that
  does not read ``init`` refuses it."""
  c = load_config("dc_fmnist.py")
  assert c.init == "real" and "init" not in registry.run_identity(c)
  assert registry.run_identity(override(load_config("dc_fmnist.py"), {"init": "noise"}))["init"] == "noise"
  k = load_config("kip_fmnist.py")
  assert "kip_learn_labels" not in registry.run_identity(k)
  assert "kip_learn_labels" in registry.run_identity(override(load_config("kip_fmnist.py"),
                                                              {"kip_learn_labels": False}))
  m = load_config("mtt_fmnist.py")
  m.init = "noise"
  with pytest.raises(ValueError, match="does not read it"):
    registry.build(m, None)
