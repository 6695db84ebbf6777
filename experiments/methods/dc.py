"""DC (gradient matching, Zhao et al., ICLR 2021): per class, the gradients of a network on real and
synthetic images are matched, while the network trains on the synthetic set (``c.outer_loop`` /
``c.inner_loop``, or the reference's loops for the IPC)."""
from experiments import registry as r


def build(c, data):  # c.init: DC's main.py starts from noise (--init default 'noise')
  return r.Method(r.gradient_matching(c, data, use_dsa=False), r.optimizer(c),
                  r.class_sampler(c, data), r.initial_set(c, data, "noise"),
                  evaluators=r.evaluators(c, data))
