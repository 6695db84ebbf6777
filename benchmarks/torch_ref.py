"""The PyTorch side of ``benchmarks.vs_pytorch``: the units of work of the reference code bases
(DatasetCondensation's DC/DSA/DM and ``evaluate_synset``, mtt-distillation's ``distill.py`` and
``buffer.py``), written from the papers and the public code's behaviour.

ConvNet: ``depth`` x [conv 3x3 (first conv pads 3 on one-channel 28x28 inputs, else 1), instance norm
(GroupNorm with groups = channels, affine), ReLU, 2x2 average pool], flatten, linear. Its parameters
live in one flat vector (as MTT's ``ReparamModule``) so that the trajectory unroll can differentiate
through SGD steps on it. DSA: the reference's ``DiffAugment`` in mode "S" (one op of
color/crop/cutout/flip/scale/rotate per call, per-image or siamese random values).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------------
# ConvNet on a flat parameter vector
# ----------------------------------------------------------------------------------------------------


def convnet_shapes(width: int, depth: int, channels: int, num_classes: int, hw: int = 32) -> list:
  """``[(name, shape)]`` in the flat vector's order."""
  out, c = [], channels
  for d in range(depth):
    out += [(f"conv{d}.w", (width, c, 3, 3)), (f"conv{d}.b", (width,)),
            (f"norm{d}.w", (width,)), (f"norm{d}.b", (width,))]
    c = width
    hw //= 2
  out += [("fc.w", (num_classes, width * hw * hw)), ("fc.b", (num_classes,))]
  return out


def unflatten(flat: torch.Tensor, shapes: list) -> dict:
  out, i = {}, 0
  for name, shape in shapes:
    n = math.prod(shape)
    out[name] = flat[i:i + n].view(shape)
    i += n
  return out


def convnet_forward(flat: torch.Tensor, x: torch.Tensor, shapes: list, depth: int,
                    features: bool = False) -> torch.Tensor:
  p = unflatten(flat, shapes)
  for d in range(depth):
    pad = 3 if (d == 0 and x.shape[1] == 1 and x.shape[-1] == 28) else 1
    x = F.conv2d(x, p[f"conv{d}.w"], p[f"conv{d}.b"], padding=pad)
    x = F.group_norm(x, x.shape[1], p[f"norm{d}.w"], p[f"norm{d}.b"], eps=1e-5)
    x = F.avg_pool2d(F.relu(x), 2)
  x = x.flatten(1)
  return x if features else F.linear(x, p["fc.w"], p["fc.b"])


def init_flat(shapes: list, seed: int) -> torch.Tensor:
  """PyTorch's default initialization (kaiming-uniform a=sqrt(5) weights, uniform biases)."""
  g = torch.Generator().manual_seed(seed)
  parts, fan_in = [], 1
  for name, shape in shapes:
    if name.startswith("norm"):
      parts.append(torch.ones(shape) if name.endswith(".w") else torch.zeros(shape))
      continue
    if name.endswith(".w"):
      fan_in = math.prod(shape[1:])
    bound = 1.0 / math.sqrt(fan_in)
    parts.append((torch.rand(shape, generator=g) * 2 - 1) * bound)
  return torch.cat([q.reshape(-1) for q in parts])


def from_flax(params, width: int, depth: int) -> torch.Tensor:
  """The flat vector of a jaxdistill ConvNet's ``params`` (NHWC kernels and flatten order mapped)."""
  parts = []
  for d in range(depth):
    conv, norm = params[f"Conv_{d}"], params[f"GroupNorm_{d}"]
    parts += [np.transpose(np.asarray(conv["kernel"]), (3, 2, 0, 1)), np.asarray(conv["bias"]),
              np.asarray(norm["scale"]), np.asarray(norm["bias"])]
  k = np.asarray(params["Dense_0"]["kernel"])  # [(h, w, c), K]
  hw = int(round(math.sqrt(k.shape[0] // width)))
  k = k.reshape(hw, hw, width, -1).transpose(3, 2, 0, 1).reshape(k.shape[-1], -1)
  parts += [k, np.asarray(params["Dense_0"]["bias"])]
  return torch.from_numpy(np.concatenate([q.reshape(-1) for q in parts]).astype(np.float32))


# ----------------------------------------------------------------------------------------------------
# DSA (DiffAugment, mode "S")
# ----------------------------------------------------------------------------------------------------

def _rand(n, siamese, gen):
  return torch.rand(1 if siamese else n, generator=gen)


def _affine(x, theta):
  grid = F.affine_grid(theta, list(x.shape), align_corners=True)
  return F.grid_sample(x, grid, align_corners=True)


def dsa(x: torch.Tensor, gen: torch.Generator, siamese: bool) -> torch.Tensor:
  n = x.shape[0]
  op = ["color", "crop", "cutout", "flip", "scale", "rotate"][
      int(torch.randint(0, 6, (1,), generator=gen))]
  expand = (lambda r: r.expand(n)) if siamese else (lambda r: r)
  if op == "color":
    x = x + (expand(_rand(n, siamese, gen)) - 0.5).view(-1, 1, 1, 1)
    m = x.mean(1, keepdim=True)
    x = (x - m) * (expand(_rand(n, siamese, gen)) * 2.0).view(-1, 1, 1, 1) + m
    m = x.mean((1, 2, 3), keepdim=True)
    return (x - m) * (expand(_rand(n, siamese, gen)) + 0.5).view(-1, 1, 1, 1) + m
  if op == "flip":
    do = expand(_rand(n, siamese, gen)) < 0.5
    return torch.where(do.view(-1, 1, 1, 1), x.flip(3), x)
  if op == "scale":
    sx = expand(_rand(n, siamese, gen)) * 0.4 + 0.8
    sy = expand(_rand(n, siamese, gen)) * 0.4 + 0.8
    z = torch.zeros(n)
    theta = torch.stack([torch.stack([sx, z, z], 1), torch.stack([z, sy, z], 1)], 1)
    return _affine(x, theta)
  if op == "rotate":
    a = (expand(_rand(n, siamese, gen)) - 0.5) * 2 * 15 / 180 * math.pi
    z = torch.zeros(n)
    theta = torch.stack([torch.stack([a.cos(), a.sin(), z], 1),
                         torch.stack([-a.sin(), a.cos(), z], 1)], 1)
    return _affine(x, theta)
  h, w = x.shape[2], x.shape[3]
  if op == "crop":  # translate by up to 1/8 of the size, zero fill
    sh, sw = int(h * 0.125 + 0.5), int(w * 0.125 + 0.5)
    ty = (expand(_rand(n, siamese, gen)) * (2 * sh + 1)).long() - sh
    tx = (expand(_rand(n, siamese, gen)) * (2 * sw + 1)).long() - sw
    gy = (torch.arange(h).view(1, h, 1) + ty.view(-1, 1, 1) + 1).clamp(0, h + 1)
    gx = (torch.arange(w).view(1, 1, w) + tx.view(-1, 1, 1) + 1).clamp(0, w + 1)
    xp = F.pad(x, [1, 1, 1, 1])
    bi = torch.arange(n).view(-1, 1, 1)
    return xp.permute(0, 2, 3, 1)[bi, gy, gx].permute(0, 3, 1, 2)
  # cutout: a zeroed half-size square
  ch, cw = int(h * 0.5 + 0.5), int(w * 0.5 + 0.5)
  oy = (expand(_rand(n, siamese, gen)) * (h + (1 - ch % 2))).long()
  ox = (expand(_rand(n, siamese, gen)) * (w + (1 - cw % 2))).long()
  yy = torch.arange(h).view(1, h, 1) - (oy.view(-1, 1, 1) - ch // 2)
  xx = torch.arange(w).view(1, 1, w) - (ox.view(-1, 1, 1) - cw // 2)
  keep = ~((yy >= 0) & (yy < ch) & (xx >= 0) & (xx < cw))
  return x * keep.unsqueeze(1).to(x.dtype)


def no_aug(x, gen, siamese):
  return x


# ----------------------------------------------------------------------------------------------------
# Units of work
# ----------------------------------------------------------------------------------------------------

def mtt_loss(images, labels, syn_lr, start, target, shapes, depth, syn_steps, batch_syn, aug, gen):
  """MTT's student unroll (``create_graph=True`` on the flat vector) and its normalized distance."""
  params = start.clone().requires_grad_(True)
  student = [params]
  n = images.shape[0]
  order = []
  for _ in range(syn_steps):
    if not order:
      order = list(torch.randperm(n, generator=gen).split(batch_syn))
    idx = order.pop()
    x = aug(images[idx], gen, False)
    ce = F.cross_entropy(convnet_forward(student[-1], x, shapes, depth), labels[idx])
    grad = torch.autograd.grad(ce, student[-1], create_graph=True)[0]
    student.append(student[-1] - syn_lr * grad)
  num = ((student[-1] - target) ** 2).sum()
  den = ((start - target) ** 2).sum()
  return num / den


def dm_loss(real, syn, shapes, depth, aug, gen):
  """DM: per class, squared distance of mean embeddings of real and synthetic images (siamese
  augmentation per class); ``real`` ``[K, P, C, H, W]``, ``syn`` ``[K, I, C, H, W]``."""
  net = init_flat(shapes, int(torch.randint(0, 2 ** 31 - 1, (1,), generator=gen)))
  loss = 0.0
  for c in range(real.shape[0]):
    seed = int(torch.randint(0, 2 ** 31 - 1, (1,), generator=gen))
    xr = aug(real[c], torch.Generator().manual_seed(seed), True)
    xs = aug(syn[c], torch.Generator().manual_seed(seed), True)
    er = convnet_forward(net, xr, shapes, depth, features=True)
    es = convnet_forward(net, xs, shapes, depth, features=True)
    loss = loss + ((er.mean(0) - es.mean(0)) ** 2).sum()
  return loss


def _row_distance(gr, gs):
  """DC's distance: per output row, 1 - cosine (bias vectors: 0, as the reference)."""
  if gr.dim() == 1:
    return torch.zeros((), dtype=gr.dtype)
  gr, gs = gr.reshape(gr.shape[0], -1), gs.reshape(gs.shape[0], -1)
  return (1 - (gr * gs).sum(-1) / (gr.norm(dim=-1) * gs.norm(dim=-1) + 1e-6)).sum()


def dc_match_loss(net, real, syn, shapes, depth, aug, gen):
  """DC/DSA's matching loss: per class, the distance of real and synthetic gradients."""
  loss = 0.0
  for c in range(real.shape[0]):
    seed = int(torch.randint(0, 2 ** 31 - 1, (1,), generator=gen))
    xr = aug(real[c], torch.Generator().manual_seed(seed), True)
    xs = aug(syn[c], torch.Generator().manual_seed(seed), True)
    yr = torch.full((xr.shape[0],), c, dtype=torch.long)
    ys = torch.full((xs.shape[0],), c, dtype=torch.long)
    gr = torch.autograd.grad(F.cross_entropy(convnet_forward(net, xr, shapes, depth), yr), net)[0]
    gs = torch.autograd.grad(F.cross_entropy(convnet_forward(net, xs, shapes, depth), ys), net,
                             create_graph=True)[0]
    for a, b in zip(unflatten(gr.detach(), shapes).values(), unflatten(gs, shapes).values()):
      loss = loss + _row_distance(a, b)
  return loss


def train_epochs(net, images, labels, shapes, depth, epochs, lr, momentum, weight_decay,
                 batch_size, aug, gen, decay_at=None):
  """SGD epochs over ``images`` as the references' ``epoch('train', ...)``; ``decay_at``: the epoch
  after which lr / 10 with a fresh optimizer (``evaluate_synset``). Returns the trained vector."""
  net = net.detach().clone().requires_grad_(True)
  opt = torch.optim.SGD([net], lr=lr, momentum=momentum, weight_decay=weight_decay)
  n = images.shape[0]
  for ep in range(epochs):
    for idx in torch.randperm(n, generator=gen).split(batch_size):
      x = aug(images[idx], gen, False)
      loss = F.cross_entropy(convnet_forward(net, x, shapes, depth), labels[idx])
      opt.zero_grad()
      loss.backward()
      opt.step()
    if decay_at is not None and ep == decay_at:
      lr *= 0.1
      opt = torch.optim.SGD([net], lr=lr, momentum=momentum, weight_decay=weight_decay)
  return net.detach()


def predict(net, x, shapes, depth, batch_size=256):
  with torch.no_grad():
    return torch.cat([convnet_forward(net, x[i:i + batch_size], shapes, depth).argmax(1)
                      for i in range(0, x.shape[0], batch_size)])
