"""The DC repo's ResNet18 for 32x32 images (BN or instance norm) and its avg-pool variant ``ResNet_AP``."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax

from jaxdistill.models.layers import (DEFAULT_CONV_IMPL, Conv, Dense, avg_pool2, check_images,
                                      first_pad, flatten, make_norm)


class BasicBlock(nn.Module):
  """Two 3x3 convs with a residual connection; ``[N, H, W, Cin] -> [N, H/stride, W/stride, features]``.

  With ``avg_pool_down`` (``BasicBlock_AP`` in the reference) the convs keep stride 1 and a 2x2 average
  pool does the downsampling: after the first conv's ReLU, and after the 1x1 shortcut conv.

  Attributes:
    features: output channels.
    stride: 1 or 2.
    norm: "batchnorm", "instancenorm" or "none".
    avg_pool_down: downsample by average pooling instead of strided convs.
    conv_impl: ``Conv`` implementation.
  """
  features: int
  stride: int = 1
  norm: str = "batchnorm"
  avg_pool_down: bool = False
  conv_impl: str = DEFAULT_CONV_IMPL

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv_stride = 1 if self.avg_pool_down else self.stride
    y = Conv(self.features, 3, conv_stride, 1, use_bias=False, impl=self.conv_impl)(x)
    y = nn.relu(make_norm(self.norm, train)(y))
    if self.avg_pool_down and self.stride != 1:
      y = avg_pool2(y)
    y = Conv(self.features, 3, 1, 1, use_bias=False, impl=self.conv_impl)(y)
    y = make_norm(self.norm, train)(y)
    if self.stride != 1 or x.shape[-1] != self.features:
      x = Conv(self.features, 1, conv_stride, 0, use_bias=False, impl=self.conv_impl, name="shortcut_conv")(x)
      if self.avg_pool_down and self.stride != 1:
        x = avg_pool2(x)
      x = make_norm(self.norm, train, name="shortcut_norm")(x)
    return nn.relu(y + x)


class ResNet(nn.Module):
  """ResNet for small images as in DatasetCondensation (``ResNet`` / ``ResNet_AP``).

  Stem: conv 3x3 ``width`` stride 1 (pad 3 for one-channel inputs so 28x28 -> 32x32, else 1), norm,
  ReLU, no max-pool; then 4 stages of ``stage_sizes`` BasicBlocks with ``width * [1, 2, 4, 8]`` channels
  and strides 1, 2, 2, 2. Head: global average pool -> ``[N, 8 * width]`` features -> Dense. With
  ``avg_pool_down`` (ResNet_AP) downsampling is by 2x2 average pooling and the head flattens the final
  map without global pooling (as the reference: ``8 * width * 4 * 4`` = 8192 features for 32x32).

  The reference stem pads by 1 for every input (28x28 MNIST then ends at 4x4, or 3x3 for ResNet_AP);
  we pad one-channel inputs by 3 as the other models do, so FMNIST and CIFAR share the geometry.

  Attributes:
    num_classes: output logits ``K``.
    stage_sizes: blocks per stage (ResNet18: 2, 2, 2, 2).
    width: stem / first-stage channels (64 in the reference).
    norm: "batchnorm" (default, ResNet18BN), "instancenorm" (the reference's ``ResNet18``) or "none".
    avg_pool_down: the ``ResNet_AP`` variant.
    stem_stride: the first convolution's stride: 1 (32x32 images), 2 for the references' 64x64
      ``ResNet18BN_Tiny`` (``res=64``), which reaches the same 4x4 final map.
    conv_impl: ``Conv`` implementation.
  """
  num_classes: int
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  width: int = 64
  norm: str = "batchnorm"
  avg_pool_down: bool = False
  stem_stride: int = 1
  conv_impl: str = DEFAULT_CONV_IMPL

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True, return_features: bool = False):
    """Logits ``[N, K]`` of images ``[N, H, W, C]``; with ``return_features`` also ``[N, D]``."""
    x = check_images(x, "ResNet")
    x = Conv(self.width, 3, self.stem_stride, first_pad(x), use_bias=False, impl=self.conv_impl)(x)
    x = nn.relu(make_norm(self.norm, train)(x))
    for stage, num_blocks in enumerate(self.stage_sizes):
      for b in range(num_blocks):
        stride = 2 if stage > 0 and b == 0 else 1
        block = BasicBlock(self.width * 2 ** stage, stride, self.norm, self.avg_pool_down, self.conv_impl)
        x = block(x, train)
    feats = flatten(x) if self.avg_pool_down else x.mean(axis=(1, 2))
    logits = Dense(self.num_classes)(feats)
    return (logits, feats) if return_features else logits
