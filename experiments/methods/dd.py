"""DD (Wang et al., 2018): the synthetic set and one step size per unrolled step are learned through
``c.dd_unroll_steps`` x ``c.dd_epochs`` unrolled training steps of a fresh network. Its protocol
evaluation uses the protocol's step size; the ``"dd_own"`` evaluator trains by DD's own unroll with the
learned step sizes."""
import jax
import jax.numpy as jnp
import numpy as np

import jaxdistill as jd
from experiments import registry as r


def _initial_log_lr(c):
  return jnp.full((c.dd_unroll_steps * c.dd_epochs,), np.log(c.dd_lr_init), jnp.float32)


def dd_own(c, data, model):
  """The ``"dd_own"`` evaluator: test accuracy of networks trained by DD's own unroll with the set's
  step sizes (a set without them, e.g. random real images: the initial step size)."""
  x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)

  def fn(key, syn, mask=None):
    if syn.log_lr is None:
      syn = syn._replace(log_lr=_initial_log_lr(c))

    @jax.jit
    def one(k):
      v = jd.objectives.dd_train(model, syn, k, c.dd_unroll_steps, c.dd_epochs,
                                 num_classes=data.num_classes)
      return jnp.mean(jd.evaluate.predict(model, v, x_test) == y_test)

    accs = np.array([float(one(jax.random.fold_in(key, i))) for i in range(c.num_seeds)])
    return {"DD's own training": jd.types.EvalResult(float(accs.mean()), float(accs.std()), accs)}
  return fn


def build(c, data):
  model = r.model_of(c, data)
  obj = jd.objectives.dataset_distillation(model, data.num_classes, c.dd_unroll_steps, c.dd_epochs)
  init = r.initial_set(c, data, "noise")._replace(log_lr=_initial_log_lr(c))  # DD: torch.randn
  return r.Method(obj, r.optimizer(c, log_lr=True), r.flat_sampler(c, data), init,
                  evaluators=r.evaluators(c, data, own={"dd_own": dd_own(c, data, model)},
                                          use_learned_lr=False))


def smoke(c) -> dict:
  return {"dd_unroll_steps": 2, "dd_epochs": 1}
