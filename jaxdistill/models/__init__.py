"""Networks of the dataset-distillation literature, all with one interface, and ``adapt``: any JAX
model (Flax linen of any call signature, Flax NNX, Equinox, plain functions) as the library calls it.

The library's networks initialize as PyTorch's ``nn.Conv2d`` / ``nn.Linear`` do (the references'
networks); a user's own model keeps its own initialization.

``model.apply(variables, x, train=...)`` maps NHWC images ``[N, H, W, C]`` (28x28x1 or 32x32x3, float32)
to logits ``[N, K]``; ``return_features=True`` gives ``(logits, features [N, D])`` with the penultimate
embedding (what DM, herding and coverage use). BatchNorm models keep running statistics in the
``batch_stats`` collection: train with ``mutable=["batch_stats"]``, test with ``train=False``. Every conv
is ``layers.Conv``, whose default implementation runs fast on XLA's CPU backend inside ``lax.scan``.

Example::

  model = get_model("convnet", num_classes=10, width=64)
  variables = model.init(key, jnp.zeros((1, 28, 28, 1)), train=False)
  logits, feats = model.apply(variables, images, train=True, return_features=True)   # [N, 10], [N, 1024]
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn

from jaxdistill.models.alexnet import AlexNet
from jaxdistill.models.convnet import ConvNet, ConvNetFRePo
from jaxdistill.models.layers import (CONV_IMPLS, DEFAULT_CONV_IMPL, Conv, Dense, conv2d, instance_norm,
                                      prefer_conv, resolve_conv_impl,
                                      torch_bias_init, torch_weight_init,
                                      make_norm)
from jaxdistill.models.mlp import MLP
from jaxdistill.models.adapter import (ModelError, Net, adapt, embed, equinox_model, functions,
                                       is_model, nnx_model, nnx_variables)
from jaxdistill.models.nets import NetFns, as_net, flax_net, has_state, state_of
from jaxdistill.models.resnet import BasicBlock, ResNet
from jaxdistill.models.vgg import VGG

# name -> (class, default options). Names follow the DC repo's get_network where they exist, except that
# "resnet18" is the BatchNorm ResNet18 (ResNet18BN there; SelMatch's evaluation network) and the
# instance-norm one is "resnet18_in".
_REGISTRY = {
    "convnet": (ConvNet, {}),
    "convnet_bn": (ConvNet, {"norm": "batchnorm"}),
    "convnet_nonorm": (ConvNet, {"norm": "none"}),
    "convnet_ln": (ConvNet, {"norm": "layernorm"}),
    "convnet_gn": (ConvNet, {"norm": "groupnorm"}),
    "convnet_maxpool": (ConvNet, {"pooling": "maxpooling"}),
    "convnet_nopool": (ConvNet, {"pooling": "none"}),
    "convnet_frepo": (ConvNetFRePo, {}),
    "mlp": (MLP, {}),
    "alexnet": (AlexNet, {}),
    "vgg11": (VGG, {}),
    "vgg11bn": (VGG, {"norm": "batchnorm"}),
    "resnet18": (ResNet, {}),
    "resnet18bn": (ResNet, {}),
    "resnet18bn_tiny": (ResNet, {"stem_stride": 2}),  # the references' ResNet18BN_Tiny (64x64)
    "resnet18_in": (ResNet, {"norm": "instancenorm"}),
    "resnet18bn_ap": (ResNet, {"avg_pool_down": True}),
    "resnet18_ap": (ResNet, {"avg_pool_down": True, "norm": "instancenorm"}),
}
MODEL_NAMES = tuple(_REGISTRY)


def get_model(name: str, num_classes: int, **kwargs) -> nn.Module:
  """A Flax module by registry name (case-insensitive).

  Args:
    name: one of ``MODEL_NAMES``.
    num_classes: number of output logits ``K``.
    **kwargs: module options overriding the name's defaults (e.g. ``width=64``, ``conv_impl="lax"``).

  Returns:
    The (unbound) module.

  Raises:
    ValueError: unknown name, or an option the model does not have.
  """
  key = name.lower()
  if key not in _REGISTRY:
    raise ValueError(f"Unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}.")
  cls, defaults = _REGISTRY[key]
  fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name", "num_classes"}
  unknown = set(kwargs) - fields
  if unknown:
    raise ValueError(f"Model {name!r} ({cls.__name__}) has no option(s) {sorted(unknown)}; "
                     f"its options are {sorted(fields)}.")
  return cls(num_classes=num_classes, **{**defaults, **kwargs})


__all__ = ["ModelError", "Net", "adapt", "embed", "is_model", "equinox_model", "functions", "nnx_model", "nnx_variables",
           "has_state", "state_of", "AlexNet", "BasicBlock", "CONV_IMPLS", "Conv", "Dense", "torch_bias_init", "torch_weight_init", "ConvNet", "ConvNetFRePo", "DEFAULT_CONV_IMPL",
           "MLP", "MODEL_NAMES", "prefer_conv", "resolve_conv_impl", "NetFns", "as_net", "flax_net", "ResNet", "VGG", "conv2d", "get_model", "instance_norm", "make_norm"]
