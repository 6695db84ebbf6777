"""IDC (Kim et al., ICML 2022): ``c.idc_factor``**2 real images packed per stored image (multi-formation),
decoded by upsampling, distilled by gradient matching.

``c.idc_objective``:

- ``"idc"`` (default): IDC's own matching (``jd.objectives.idc_matching``): l1 distance of the
  convolution kernels' gradients, a network trained on real images between matchings (``c.idc.n_batches``
  batches of ``c.idc.batch_net``, CutMix with ``c.idc.mix_p``), a fresh one every ``c.idc.inner_loop``
  steps, DSA ``color_crop_cutout`` (IDC's mode) for the matching and ``color_crop`` for the network, the
  images clamped to the pixel range [0, 1] before every fresh network, the image SGD stepped once per
  class within every iteration as IDC's class loop does (``image_optimizer``).
- ``"dc"``: DC's matching (cosine distance, network trained on the synthetic set) over the decoded
  images, with DSA when ``c.idc_dsa``: an explicit simplification, kept for the CPU-sized recorded runs.
"""
import jax.numpy as jnp
import ml_collections
import numpy as np

import jaxdistill as jd
from experiments import registry as r

DISTILL_FIELDS = ("idc_factor", "idc_dsa", "idc_objective", "idc")
OBJECTIVES = ("idc", "dc")

# IDC's condense.py / argument.py defaults, its --reproduce settings for Fashion-MNIST. Other datasets
# change more than the metric and image learning rate there (misc/reproduce.py: CIFAR and SVHN match
# with mse, CIFAR trains the network on n_data 2000 (32 batches), MNIST with factor > 1 drops cutout
# and CutMix): set them through c.idc.
DEFAULTS = {"inner_loop": 100, "metric": "l1", "n_batches": 8, "batch_net": 64, "lr_net": 0.01,
            "mix_p": 0.5, "batch_syn_max": 128, "clamp": True,
            "match_strategy": "color_crop_cutout", "net_strategy": "color_crop"}


def idc_settings(c) -> dict:
  """``DEFAULTS`` updated by ``c.idc``; unknown keys are refused."""
  got = dict(c.get("idc", {}))
  unknown = sorted(set(got) - set(DEFAULTS))
  if unknown:
    raise ValueError(f"Unknown c.idc field(s) {unknown}; known: {sorted(DEFAULTS)}.")
  return {**DEFAULTS, **got}


def objective(c, data):
  """IDC's objective for ``c`` (``c.idc_objective == "idc"``) and its sampler and projection."""
  s = idc_settings(c)
  off = c.get("distill_augment", "dsa") == "none"
  aug = lambda strategy, siamese: None if off else jd.augment.get_augment(
      "dsa", data.name, siamese=siamese, strategy=strategy, mode="idc")
  obj = jd.objectives.idc_matching(
      r.model_of(c, data), data.num_classes, inner_loop=s["inner_loop"],
      augment=aug(s["match_strategy"], True), train_augment=aug(s["net_strategy"], False),
      metric=s["metric"], lr_net=s["lr_net"], mix_p=s["mix_p"], batch_syn_max=s["batch_syn_max"])
  sampler = jd.distill.class_balanced_sampler(data.x_train, data.y_train, data.num_classes,
                                              c.batch_real, train_batches=(s["n_batches"], s["batch_net"]))
  mean, std = np.asarray(data.mean, np.float32), np.asarray(data.std, np.float32)
  project = jd.distill.clamp_every(-mean / std, (1 - mean) / std, s["inner_loop"]) if s["clamp"] \
      else None
  return obj, sampler, project


def build(c, data):
  f, k = c.idc_factor, data.num_classes
  kind = c.get("idc_objective", "idc")
  if kind not in OBJECTIVES:
    raise ValueError(f"Unknown idc_objective {kind!r}; known: {list(OBJECTIVES)}.")
  real = jd.selection.random(r.keys(c)[0], data.x_train, data.y_train, k, c.ipc * f * f)
  init = jd.SyntheticSet(jd.parameterization.idc_init(real.images, f),
                         jnp.repeat(jnp.arange(k, dtype=jnp.int32), c.ipc))
  if kind == "dc":
    return r.Method(r.gradient_matching(c, data, use_dsa=c.get("idc_dsa", False)), r.optimizer(c),
                    r.class_sampler(c, data), init, decode=jd.parameterization.idc_decode(f),
                    evaluators=r.evaluators(c, data))
  obj, sampler, project = objective(c, data)
  return r.Method(obj, image_optimizer(c, init, k), sampler, init,
                  decode=jd.parameterization.idc_decode(f), evaluators=r.evaluators(c, data),
                  project=project)


def image_optimizer(c, init, num_classes: int):
  """IDC's image optimizer: SGD (``c.optimizer_kwargs``: learning_rate, momentum) stepped once per
  class within every iteration, as ``condense.py`` steps it inside its class loop
  (``jd.distill.class_sequential_sgd``)."""
  if c.optimizer != "sgd":
    raise ValueError(f"IDC's objective steps SGD once per class; optimizer {c.optimizer!r} has no "
                     f"such form here (use 'sgd', or idc_objective='dc').")
  kw = dict(c.optimizer_kwargs)
  unknown = sorted(set(kw) - {"learning_rate", "momentum"})
  if unknown:
    raise ValueError(f"IDC's image SGD takes learning_rate and momentum; got also {unknown}.")
  return jd.distill.optimizer(jd.distill.class_sequential_sgd(
      kw["learning_rate"], kw.get("momentum", 0.0), np.asarray(init.labels), num_classes))


# Test-sized network updates and outer iterations (smoke runs, the paper table's tiny rows).
TEST_SIZE = {"inner_loop": 2, "n_batches": 2, "batch_net": 4}


def smoke(c) -> dict:
  return {"idc_factor": 2, "idc": ml_collections.ConfigDict({**dict(c.get("idc", {})), **TEST_SIZE})}
