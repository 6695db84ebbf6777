"""FRePo (Zhou et al., NeurIPS 2022): kernel ridge regression on the features of a pool of online-trained
networks (``c.frepo_pool``, ``c.frepo_max_online``), with learned soft labels; its protocol evaluation
trains with MSE on them, as FRePo does."""
import jaxdistill as jd
from experiments import registry as r

DISTILL_FIELDS = ("frepo_pool", "frepo_max_online", "frepo_net_kwargs", "frepo_reg")
UNUSED_FIELDS = ("model", "model_kwargs")  # its pool's network is convnet_frepo (c.frepo_net_kwargs)


def build(c, data):
  # FRePo's code: flipped copies of the set on every dataset but (Fashion-)MNIST; synthetic labels
  # divided by sqrt(K / 10) (init_proto's scale_y).
  obj = jd.objectives.frepo("convnet_frepo", data.num_classes, pool_size=c.frepo_pool,
                            max_online_updates=c.frepo_max_online,
                            net_options=dict(c.frepo_net_kwargs),
                            use_flip=data.name not in ("mnist", "fashion_mnist"),
                            reg=c.get("frepo_reg", 1e-6))
  init = r.random_init(c, data)
  init = init._replace(labels=jd.objectives.kip_labels(init.labels, data.num_classes,
                                                       scale=(data.num_classes / 10) ** 0.5))
  return r.Method(obj, r.optimizer(c, labels=True), r.flat_sampler(c, data), init,
                  evaluators=r.evaluators(c, data, soft_label_loss="mse"))


def smoke(c) -> dict:
  return {"frepo_pool": 2, "frepo_net_kwargs": {"width": 4}}
