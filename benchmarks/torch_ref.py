"""The PyTorch side of ``benchmarks.vs_pytorch``: each unit done the way the reference repositories'
own code does it (DatasetCondensation's ``networks.py``/``utils.py``/``main.py``/``main_DM.py``,
mtt-distillation's ``distill.py``/``buffer.py``/``reparam_module.py``), written for this benchmark
with the same torch ops, modules, layouts and Python control flow, the data already in tensors.

- ConvNet: an ``nn.Sequential`` of ``depth`` x [``Conv2d`` 3x3 (padding 3 on one-channel inputs for
  the first, else 1), ``GroupNorm(width, width)`` (instance norm), ``ReLU(inplace=True)``,
  ``AvgPool2d(2)``], flattened by ``view``, ``Linear``; PyTorch's default initialization.
- MTT's student: the ConvNet whose parameters are views of one flat vector, re-bound before every
  call (``FlatParams``, as ``ReparamModule``: split, view, set as attributes).
- DSA: ``diff_augment`` as ``DiffAugment`` in mode "S" (one of color/crop/cutout/flip/scale/rotate per
  call, drawn from the global generator; siamese calls re-seed it before every draw; scale and rotate
  build their per-image matrices in a Python list).
- Training: ``epoch`` iterates a ``DataLoader`` over a ``TensorDataset`` (shuffled, no workers), and per
  batch computes the accuracy in numpy and ``loss.item()``, as the reference's ``epoch``.

What still differs from the reference scripts is listed per unit in ``benchmarks/vs_pytorch.py``.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

# ----------------------------------------------------------------------------------------------------
# ConvNet (the references' networks.py, instance norm, average pooling)
# ----------------------------------------------------------------------------------------------------


class ConvNet(nn.Module):
  def __init__(self, channel: int, num_classes: int, width: int = 128, depth: int = 3, hw: int = 28):
    super().__init__()
    layers, c = [], channel
    hw = 32 if hw == 28 else hw
    act = nn.ReLU(inplace=True)
    for d in range(depth):
      layers += [nn.Conv2d(c, width, kernel_size=3, padding=3 if channel == 1 and d == 0 else 1),
                 nn.GroupNorm(width, width, affine=True), act, nn.AvgPool2d(kernel_size=2, stride=2)]
      c = width
      hw //= 2
    self.features = nn.Sequential(*layers)
    self.classifier = nn.Linear(width * hw * hw, num_classes)

  def forward(self, x):
    out = self.features(x)
    return self.classifier(out.view(out.size(0), -1))

  def embed(self, x):
    out = self.features(x)
    return out.view(out.size(0), -1)


def flat_vector(net: nn.Module) -> torch.Tensor:
  """The parameters in ``net.parameters()`` order, concatenated (MTT's flat layout)."""
  return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


class FlatParams(nn.Module):
  """``module`` called on a flat parameter vector: its parameters are deleted and, at every call,
  re-bound as views of the vector (MTT's ``ReparamModule``)."""

  def __init__(self, module: nn.Module):
    super().__init__()
    self.module = module
    self._infos = [(m, n, p.shape) for m in module.modules() for n, p in
                   list(m.named_parameters(recurse=False))]
    self._numels = [math.prod(s) for _, _, s in self._infos]
    self.flat0 = flat_vector(module)
    for m, n, _ in self._infos:
      delattr(m, n)
    self._bind(self.flat0)

  def _bind(self, flat):
    for (m, n, s), t in zip(self._infos, flat.split(self._numels)):
      setattr(m, n, t.view(s))

  def forward(self, x, flat_param):
    saved = [getattr(m, n) for m, n, _ in self._infos]
    self._bind(torch.squeeze(flat_param))
    out = self.module(x)
    for (m, n, _), t in zip(self._infos, saved):
      setattr(m, n, t)
    return out


def load_flax(net: ConvNet, params) -> ConvNet:
  """Copies a jaxdistill ConvNet's ``params`` into ``net`` (NHWC kernels and flatten order mapped)."""
  flat = from_flax(params, net.classifier.in_features)
  with torch.no_grad():
    for p, t in zip(net.parameters(), flat.split([p.numel() for p in net.parameters()])):
      p.copy_(t.view(p.shape))
  return net


def from_flax(params, in_features: int) -> torch.Tensor:
  """The flat vector (``flat_vector`` order) of a jaxdistill ConvNet's ``params``."""
  parts, d = [], 0
  while f"Conv_{d}" in params:
    conv, norm = params[f"Conv_{d}"], params[f"GroupNorm_{d}"]
    parts += [np.transpose(np.asarray(conv["kernel"]), (3, 2, 0, 1)), np.asarray(conv["bias"]),
              np.asarray(norm["scale"]), np.asarray(norm["bias"])]
    d += 1
  k = np.asarray(params["Dense_0"]["kernel"])  # [(h, w, c), K]
  width = np.asarray(params[f"Conv_{d - 1}"]["bias"]).shape[0]
  hw = int(round(math.sqrt(in_features // width)))
  k = k.reshape(hw, hw, width, -1).transpose(3, 2, 0, 1).reshape(k.shape[-1], -1)
  parts += [k, np.asarray(params["Dense_0"]["bias"])]
  return torch.from_numpy(np.concatenate([q.reshape(-1) for q in parts]).astype(np.float32))


# ----------------------------------------------------------------------------------------------------
# DSA: DiffAugment in mode "S" (the references' utils.py)
# ----------------------------------------------------------------------------------------------------

STRATEGY = "color_crop_cutout_flip_scale_rotate"


class DSAParam:
  def __init__(self):
    self.prob_flip, self.ratio_scale, self.ratio_rotate = 0.5, 1.2, 15.0
    self.ratio_crop_pad, self.ratio_cutout = 0.125, 0.5
    self.brightness, self.saturation, self.contrast = 1.0, 2.0, 0.5
    self.batchmode, self.latestseed = False, -1


def _reseed(param):
  if param.latestseed != -1:
    torch.random.manual_seed(param.latestseed)
    param.latestseed += 1


def _rand4(x, param):
  r = torch.rand(x.size(0), 1, 1, 1, dtype=x.dtype, device=x.device)
  if param.batchmode:
    r[:] = r[0]
  return r


def _brightness(x, param):
  _reseed(param)
  return x + (_rand4(x, param) - 0.5) * param.brightness


def _saturation(x, param):
  m = x.mean(dim=1, keepdim=True)
  _reseed(param)
  return (x - m) * (_rand4(x, param) * param.saturation) + m


def _contrast(x, param):
  m = x.mean(dim=[1, 2, 3], keepdim=True)
  _reseed(param)
  return (x - m) * (_rand4(x, param) + param.contrast) + m


def _affine(x, theta, param):
  theta = torch.tensor(theta, dtype=torch.float)
  if param.batchmode:
    theta[:] = theta[0]
  grid = F.affine_grid(theta, x.shape, align_corners=True).to(x.device)
  return F.grid_sample(x, grid, align_corners=True)


def _scale(x, param):
  r = param.ratio_scale
  _reseed(param)
  sx = torch.rand(x.shape[0]) * (r - 1.0 / r) + 1.0 / r
  _reseed(param)
  sy = torch.rand(x.shape[0]) * (r - 1.0 / r) + 1.0 / r
  return _affine(x, [[[sx[i], 0, 0], [0, sy[i], 0]] for i in range(x.shape[0])], param)


def _rotate(x, param):
  _reseed(param)
  a = (torch.rand(x.shape[0]) - 0.5) * 2 * param.ratio_rotate / 180 * float(np.pi)
  return _affine(x, [[[torch.cos(a[i]), torch.sin(-a[i]), 0], [torch.sin(a[i]), torch.cos(a[i]), 0]]
                     for i in range(x.shape[0])], param)


def _flip(x, param):
  _reseed(param)
  r = torch.rand(x.size(0), 1, 1, 1, device=x.device)
  if param.batchmode:
    r[:] = r[0]
  return torch.where(r < param.prob_flip, x.flip(3), x)


def _randint3(lo, hi, n, param, device):
  _reseed(param)
  r = torch.randint(lo, hi, size=[n, 1, 1], device=device)
  if param.batchmode:
    r[:] = r[0]
  return r


def _crop(x, param):
  sx, sy = int(x.size(2) * param.ratio_crop_pad + 0.5), int(x.size(3) * param.ratio_crop_pad + 0.5)
  tx = _randint3(-sx, sx + 1, x.size(0), param, x.device)
  ty = _randint3(-sy, sy + 1, x.size(0), param, x.device)
  gb, gx, gy = torch.meshgrid(*(torch.arange(m, device=x.device) for m in (x.size(0), x.size(2), x.size(3))),
                              indexing="ij")
  gx = torch.clamp(gx + tx + 1, 0, x.size(2) + 1)
  gy = torch.clamp(gy + ty + 1, 0, x.size(3) + 1)
  xp = F.pad(x, [1, 1, 1, 1, 0, 0, 0, 0])
  return xp.permute(0, 2, 3, 1).contiguous()[gb, gx, gy].permute(0, 3, 1, 2)


def _cutout(x, param):
  cs = int(x.size(2) * param.ratio_cutout + 0.5), int(x.size(3) * param.ratio_cutout + 0.5)
  ox = _randint3(0, x.size(2) + (1 - cs[0] % 2), x.size(0), param, x.device)
  oy = _randint3(0, x.size(3) + (1 - cs[1] % 2), x.size(0), param, x.device)
  gb, gx, gy = torch.meshgrid(*(torch.arange(m, device=x.device) for m in (x.size(0), cs[0], cs[1])),
                              indexing="ij")
  gx = torch.clamp(gx + ox - cs[0] // 2, min=0, max=x.size(2) - 1)
  gy = torch.clamp(gy + oy - cs[1] // 2, min=0, max=x.size(3) - 1)
  mask = torch.ones(x.size(0), x.size(2), x.size(3), dtype=x.dtype, device=x.device)
  mask[gb, gx, gy] = 0
  return x * mask.unsqueeze(1)


OPS = {"color": [_brightness, _saturation, _contrast], "crop": [_crop], "cutout": [_cutout],
       "flip": [_flip], "scale": [_scale], "rotate": [_rotate]}


def diff_augment(x, strategy: str = STRATEGY, seed: int = -1, param: DSAParam = None):
  """One randomly chosen DSA op; ``seed != -1``: siamese (the same draw for every image, and the same
  for every call with that seed)."""
  if strategy in ("", "none", "None"):
    return x
  param = param or DSAParam()
  param.batchmode, param.latestseed = seed != -1, seed
  names = strategy.split("_")
  _reseed(param)
  for f in OPS[names[torch.randint(0, len(names), size=(1,)).item()]]:
    x = f(x, param)
  return _contiguous(x)


def _contiguous(x):
  """``x.contiguous()`` with NCHW strides. On three-channel images (the references' usual inputs)
  that is what ``contiguous()`` gives; on one-channel images PyTorch calls a channels-last result of
  the crop already contiguous and keeps its strides, which the convolutions would then propagate
  (and the ConvNet's ``view`` refuse), so such a result is copied."""
  x = x.contiguous()
  if x.dim() == 4 and x.stride() != torch.empty(x.shape, device="meta").stride():
    x = x.clone(memory_format=torch.contiguous_format)
  return x


# ----------------------------------------------------------------------------------------------------
# Training and evaluation (the references' epoch and evaluate_synset)
# ----------------------------------------------------------------------------------------------------

def epoch(mode, loader, net, optimizer, criterion, aug: bool, param: DSAParam = None):
  loss_avg, acc_avg, num = 0.0, 0, 0
  net.train() if mode == "train" else net.eval()
  device = next(net.parameters()).device
  for datum in loader:
    img = datum[0].float().to(device)
    if aug:
      img = diff_augment(img, STRATEGY, param=param)
    lab = datum[1].long().to(device)
    n_b = lab.shape[0]
    output = net(img)
    loss = criterion(output, lab)
    acc_avg += np.sum(np.equal(np.argmax(output.cpu().data.numpy(), axis=-1), lab.cpu().data.numpy()))
    loss_avg += loss.item() * n_b
    num += n_b
    if mode == "train":
      optimizer.zero_grad()
      loss.backward()
      optimizer.step()
  return loss_avg / num, acc_avg / num


def evaluate_synset(net, images, labels, test_loader, lr=0.01, epochs=1000, batch_train=256,
                    aug=True, test=True):
  """``epochs + 1`` epochs of SGD (momentum 0.9, weight decay 5e-4), lr / 10 with a new optimizer
  after epoch ``epochs // 2 + 1``, then the test pass (under ``no_grad``, as mtt-distillation's
  version; DatasetCondensation's builds the autograd graph there too). Returns ``(net, test acc)``."""
  optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=0.0005)
  criterion = nn.CrossEntropyLoss()
  loader = DataLoader(TensorDataset(images, labels), batch_size=batch_train, shuffle=True,
                      num_workers=0)
  param = DSAParam()
  for ep in range(epochs + 1):
    epoch("train", loader, net, optimizer, criterion, aug, param)
    if ep == epochs // 2 + 1:
      lr *= 0.1
      optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=0.0005)
  acc = None
  if test:
    with torch.no_grad():
      acc = epoch("test", test_loader, net, optimizer, criterion, False)[1]
  return net, acc


def test_loader(x, y, batch_size=256):
  return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False, num_workers=0)


# ----------------------------------------------------------------------------------------------------
# One iteration of each method (distill.py, main.py, main_DM.py, buffer.py)
# ----------------------------------------------------------------------------------------------------

def mtt_iteration(image_syn, label_syn, syn_lr, optimizer_img, optimizer_lr, starting, target,
                  channel, num_classes, width, syn_steps, batch_syn, dsa=True):
  """One MTT iteration: a fresh ``FlatParams`` student, ``syn_steps`` SGD steps on DSA'd synthetic
  batches with ``create_graph=True``, the normalized parameter distance, and both updates. Returns
  the loss (a tensor)."""
  student_net = FlatParams(ConvNet(channel, num_classes, width).to(image_syn.device))
  student_net.train()
  num_params = student_net.flat0.numel()
  student_params = [starting.clone().requires_grad_(True)]
  criterion = nn.CrossEntropyLoss()
  param = DSAParam()
  chunks = []
  for _ in range(syn_steps):
    if not chunks:
      chunks = list(torch.split(torch.randperm(len(image_syn)), batch_syn))
    idx = chunks.pop()
    x, y = image_syn[idx], label_syn[idx]
    if dsa:
      x = diff_augment(x, STRATEGY, param=param)
    ce = criterion(student_net(x, flat_param=student_params[-1]), y)
    grad = torch.autograd.grad(ce, student_params[-1], create_graph=True)[0]
    student_params.append(student_params[-1] - syn_lr * grad)
  param_loss = torch.tensor(0.0, device=target.device) + F.mse_loss(student_params[-1], target, reduction="sum")
  param_dist = torch.tensor(0.0, device=target.device) + F.mse_loss(starting, target, reduction="sum")
  grand_loss = (param_loss / num_params) / (param_dist / num_params)
  if optimizer_img is not None:
    optimizer_img.zero_grad()
    optimizer_lr.zero_grad()
    grand_loss.backward()
    optimizer_img.step()
    optimizer_lr.step()
  return grand_loss


def class_sampler(images_all, indices_class):
  """``get_images(c, n)``: ``n`` random images of class ``c`` (numpy permutation of its indices)."""
  return lambda c, n: images_all[np.random.permutation(indices_class[c])[:n]]


def dm_iteration(get_images, image_syn, optimizer_img, channel, num_classes, width, ipc, batch_real,
                 dsa=True, net=None):
  """One DM iteration (main_DM.py): a fresh network with frozen parameters, per class the squared
  distance of the mean embeddings of siamese-DSA'd real and synthetic images, one image update."""
  net = net if net is not None else ConvNet(channel, num_classes, width).to(image_syn.device)
  net.train()
  for p in net.parameters():
    p.requires_grad = False
  loss = torch.tensor(0.0, device=image_syn.device)
  param = DSAParam()
  for c in range(num_classes):
    img_real = get_images(c, batch_real)
    img_syn = image_syn[c * ipc:(c + 1) * ipc].reshape((ipc, *image_syn.shape[1:]))
    if dsa:
      seed = int(np.random.randint(0, 100000))  # the reference: int(time.time() * 1000) % 100000
      img_real = diff_augment(img_real, STRATEGY, seed=seed, param=param)
      img_syn = diff_augment(img_syn, STRATEGY, seed=seed, param=param)
    out_real = net.embed(img_real).detach()
    out_syn = net.embed(img_syn)
    loss += torch.sum((torch.mean(out_real, dim=0) - torch.mean(out_syn, dim=0)) ** 2)
  if optimizer_img is not None:
    optimizer_img.zero_grad()
    loss.backward()
    optimizer_img.step()
  return loss


def distance_wb(gwr, gws):
  shape = gwr.shape
  if len(shape) == 4:
    gwr, gws = gwr.reshape(shape[0], -1), gws.reshape(shape[0], -1)
  elif len(shape) == 1:
    return torch.tensor(0, dtype=torch.float, device=gwr.device)
  return torch.sum(1 - torch.sum(gwr * gws, dim=-1) /
                   (torch.norm(gwr, dim=-1) * torch.norm(gws, dim=-1) + 0.000001))


def match_loss(gw_syn, gw_real):
  dis = torch.tensor(0.0, device=gw_real[0].device)
  for gr, gs in zip(gw_real, gw_syn):
    dis += distance_wb(gr, gs)
  return dis


def dc_outer_step(net, optimizer_net, get_images, image_syn, label_syn, optimizer_img, num_classes,
                  ipc, batch_real, inner_loop, batch_train=256, dsa=False, update=True):
  """One outer step of DC/DSA (main.py): per class, gradients of the real and the synthetic batch,
  their distance, one image update; then ``inner_loop`` epochs of the network on the synthetic set.
  Returns the matching loss (a tensor)."""
  criterion = nn.CrossEntropyLoss()
  net_parameters = list(net.parameters())
  loss = torch.tensor(0.0, device=image_syn.device)
  param = DSAParam()
  for c in range(num_classes):
    img_real = get_images(c, batch_real)
    lab_real = torch.ones((img_real.shape[0],), dtype=torch.long, device=image_syn.device) * c
    img_syn = image_syn[c * ipc:(c + 1) * ipc].reshape((ipc, *image_syn.shape[1:]))
    lab_syn = torch.ones((ipc,), dtype=torch.long, device=image_syn.device) * c
    if dsa:
      seed = int(np.random.randint(0, 100000))
      img_real = diff_augment(img_real, STRATEGY, seed=seed, param=param)
      img_syn = diff_augment(img_syn, STRATEGY, seed=seed, param=param)
    gw_real = torch.autograd.grad(criterion(net(img_real), lab_real), net_parameters)
    gw_real = list(g.detach().clone() for g in gw_real)
    gw_syn = torch.autograd.grad(criterion(net(img_syn), lab_syn), net_parameters, create_graph=True)
    loss += match_loss(gw_syn, gw_real)
  if not update:
    return loss
  optimizer_img.zero_grad()
  loss.backward()
  optimizer_img.step()
  loss.item()
  image_syn_train, label_syn_train = copy.deepcopy(image_syn.detach()), copy.deepcopy(label_syn.detach())
  loader = DataLoader(TensorDataset(image_syn_train, label_syn_train), batch_size=batch_train,
                      shuffle=True, num_workers=0)
  for _ in range(inner_loop):
    epoch("train", loader, net, optimizer_net, criterion, dsa, param)
  return loss


def train_loader(images, labels, batch_train=256):
  """The shuffled ``DataLoader`` of expert training (buffer.py) over copies of the tensors."""
  return DataLoader(TensorDataset(copy.deepcopy(images.detach()), copy.deepcopy(labels.detach())),
                    batch_size=batch_train, shuffle=True, num_workers=0)
