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

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

import jaxdistill as jd
from experiments import distill, registry
from experiments.configs import papers

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
  small = {"steps": 1, "ipc": 1, "seed": 0, "num_seeds": 1, "eval_epochs": 1, "eval_augment": "none",
           "eval_models": ("mlp",), "eval_model_kwargs": {"mlp": {"width": 8}},
           "model_kwargs.width": 8, "distill_augment": "none", "batch_real": 2, "progress": False,
           "checkpoint_every": 1, "image_every": 0, "workdir": workdir,
           "results": os.path.join(workdir, "results.md")}
  if mlp:
    small.update({"model": "mlp", "model_kwargs": {"width": 8}})
  small["zca"] = False  # fitting ZCA on 3072-4096 dimensions takes minutes of a loaded CPU
  if c.dataset == "fashion_mnist":
    small["max_per_class"] = 10
  if c.dataset.startswith("custom"):
    small["data_dir"] = tiny_npz
  if c.method == "idc":
    small["idc_factor"] = 2
  if c.method == "dd":
    small.update({"dd_unroll_steps": 2, "dd_epochs": 1})
  if c.method == "frepo":
    small.update({"frepo_pool": 2, "frepo_net_kwargs": {"width": 4}})
  if "experts" in c:
    small.update({"experts.num": 1, "experts.epochs": 3, "experts.batch_size": 64,
                  "experts.augment": "none", "experts.progress": False, "experts.dir": "",
                  "mtt.syn_steps": 2, "mtt.expert_epochs": 1, "mtt.max_start_epoch": 2,
                  "mtt.min_start_epoch": 0, "mtt.batch_syn": 0,
                  "coverage_sample": 0})
    if c.mtt.initial_max_start_epoch:  # keep DATM's growing start range
      small.update({"mtt.initial_max_start_epoch": 1, "mtt.expansion_steps": 1})
  if "datm" in c:
    small["datm.label_epoch"] = 2
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


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds_and_traces_a_step(name, workdir, tiny_npz, cached_data, monkeypatch):
  """Every config: its method builds from its fields on its dataset, its evaluators exist, and one
  distillation step traces (shapes and dtypes through the whole step, without compiling it)."""
  c = load_config(name)
  if "method" not in c:  # another experiment's config (baselines, the SelMatch sweep): it loads
    return
  assert c.method in registry.BUILDERS
  assert set(c.eval_models) <= set(jd.models.MODEL_NAMES), c.eval_models
  c = shrink(c, workdir, tiny_npz)
  monkeypatch.setattr(registry, "experts", fake_experts)  # DATM's real-expert path runs end to end
  monkeypatch.setattr(registry, "correct_init",
                      lambda c, data, model, params: registry.random_init(c, data))
  monkeypatch.setattr(jd.objectives, "soft_labels_from_experts",
                      lambda apply, nets, images, labels: jax.nn.one_hot(labels, data.num_classes))
  monkeypatch.setattr(registry, "difficulty_scores",
                      lambda d, ids, e: np.arange(len(data.y_train), dtype=np.float64))
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
  c.mtt.batch_syn = 100  # does not divide ratio 5%'s 150 rows: refused before any work
  with pytest.raises(ValueError, match="batch_syn"):
    selmatch.check_config(c, data.num_classes)


# ----------------------------------------------------------------------------------------------------
# Refactor guard: three steps of every method from a fixed key reproduce recorded values
# ----------------------------------------------------------------------------------------------------

GOLDEN = os.path.join(os.path.dirname(__file__), "golden_steps.json")
GOLDEN_CONFIGS = ("dm_fmnist.py", "dc_fmnist.py", "dsa_fmnist.py", "idc_fmnist.py", "kip_fmnist.py",
                  "frepo_fmnist.py", "dd_fmnist.py", "mtt_fmnist.py", "datm_fmnist.py",
                  "selmatch_fmnist.py")


def _fingerprint(syn: jd.SyntheticSet, history: list) -> dict:
  """Values that change when any pixel, label or step size of the set moves."""
  images = np.asarray(syn.images, np.float64)
  out = {"images_sum": float(images.sum()), "images_abs_sum": float(np.abs(images).sum()),
         "images_weighted": float((images.ravel() * np.linspace(-1, 1, images.size)).sum()),
         "loss": [float(h["loss"]) for h in history]}
  if jnp.issubdtype(syn.labels.dtype, jnp.floating):
    out["labels_sum"] = float(np.asarray(syn.labels, np.float64).sum())
  if syn.log_lr is not None:
    out["log_lr"] = float(np.mean(np.asarray(syn.log_lr, np.float64)))
  return out


@pytest.mark.parametrize("name", GOLDEN_CONFIGS)
def test_three_steps_reproduce_recorded_values(name, workdir, tiny_npz, cached_data, monkeypatch):
  """Refactor guard: each method's config (width-8 MLP, its own augmentation, untrained stand-in
  experts) runs three steps from a fixed key and matches the values recorded in ``golden_steps.json``
  (bit-identical on the machine that recorded them; the tolerance only absorbs another CPU's
  instruction set). ``JAXDISTILL_RECORD_GOLDEN=1`` records them anew: only for a change that is meant
  to move results, said in its commit."""
  c = shrink(load_config(name), workdir, tiny_npz, mlp=True)
  c.distill_augment = "dsa"  # the methods that augment do (the others ignore it)
  monkeypatch.setattr(registry, "experts", fake_experts)
  monkeypatch.setattr(registry, "difficulty_scores",
                      lambda d, ids, e: np.cos(np.arange(len(data.y_train), dtype=np.float64)))
  data = registry.load_data(c)
  m = registry.build(c, data)
  d = jd.distill.Distiller(m.objective, m.optimizer, m.sampler,
                           mask=None if m.mask is None else jnp.asarray(m.mask), decode=m.decode)
  with jax.numpy_dtype_promotion("standard"):
    state, history = jd.distill.run(jax.random.key(7), m.init, d, 3, log_every=1, progress=False)
  got = _fingerprint(jd.distill.decoded(state, d), history)
  recorded = {}
  if os.path.exists(GOLDEN):
    with open(GOLDEN) as f:
      recorded = json.load(f)
  if os.environ.get("JAXDISTILL_RECORD_GOLDEN"):
    recorded[name] = got
    with open(GOLDEN, "w") as f:
      json.dump(recorded, f, indent=1, sort_keys=True)
  assert name in recorded, f"No recorded values for {name}: run with JAXDISTILL_RECORD_GOLDEN=1."
  want = recorded[name]
  assert set(got) == set(want)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=2e-5, atol=1e-6, err_msg=f"{name}: {k}")


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
