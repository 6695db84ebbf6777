"""KIP (Nguyen et al., ICLR 2021): kernel ridge regression from the synthetic set (images and, with
``c.kip_learn_labels``, learned soft labels) to real batches under a fully connected NTK (``c.kip_depth``, ridge ``c.kip_reg``). Its
protocol evaluation trains with MSE on the learned labels, as KIP does; the ``"krr"`` evaluator is the
kernel predictor's own test accuracy."""
import jaxdistill as jd
from experiments import registry as r

UNUSED_FIELDS = ("model", "model_kwargs")  # the kernel is c.kip_depth's NTK, not c.model


def krr(c, data, kernel):
  """The ``"krr"`` evaluator: test accuracy of kernel ridge regression from the set."""
  def fn(key, syn, mask=None):
    return {"KRR": jd.objectives.krr_test_accuracy(kernel, syn, data.x_test, data.y_test,
                                                   reg=c.kip_reg, num_classes=data.num_classes)}
  return fn


def build(c, data):
  kernel = jd.kernels.fc_kernel_fn("ntk", depth=c.kip_depth)
  init = r.random_init(c, data)
  init = init._replace(labels=jd.objectives.kip_labels(init.labels, data.num_classes))
  return r.Method(jd.objectives.kip(kernel, data.num_classes, reg=c.kip_reg),
                  r.optimizer(c, labels=c.get("kip_learn_labels", True)), r.flat_sampler(c, data), init,
                  evaluators=r.evaluators(c, data, own={"krr": krr(c, data, kernel)},
                                          soft_label_loss="mse"))
