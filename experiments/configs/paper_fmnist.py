"""One row of the papers' Fashion-MNIST tables at the paper's budget, evaluated under the paper's protocol.

Command (method and IPC after the file name):
  .venv/bin/python -m experiments.distill --config experiments/configs/paper_fmnist.py:dc,1

The whole table, resumable, with accuracy against iterations: ``scripts/paper_fmnist.sh``.

Distillation as each paper's code runs it: ConvNet width 128 (depth 3, instance norm), 256 real images
per class per step, images SGD momentum 0.5 with the paper's learning rate, the paper's iterations
(DC / DSA: 1000 iterations of the (outer, inner) loops for the IPC, counted here in outer steps; DM:
20,000; IDC: 2000 iterations of 100 inner steps, counted here in inner steps). Evaluation: ``jaxdistill.evaluate.protocol`` of the same paper (DC: 300 epochs without
augmentation, DSA / DM: 1000 epochs with DSA; 20 networks each). The synthetic images start from random
real images (``init="real"``: DSA's README command and DM's code default; DC's ``main.py`` defaults
to noise, ``--config.init=noise``, a difference kept because the recorded DC rows ran from real images).

IDC (its ``condense.py --reproduce``, Fashion-MNIST): multi-formation factor 2 (4 decoded images per
stored one, initialized from 4 real images), IDC's own gradient matching (``jd.objectives.idc_matching``:
l1 distance of the convolution kernels' gradients; the network trained on 8 batches of 64 real images
with CutMix between matchings, a fresh one every 100 steps), 64 real images per class, images SGD
momentum 0.5 at IDC's lr 1e-4 x (ipc / 10) x (28 / 32)^2 in pixel units (divided here by std^2, as the
images are stored normalized), clamped to [0, 1] before every fresh network; evaluated under IDC's
protocol.

Cost on the 2-core CPU: a DC IPC 1 step (one outer step) takes ~13 s, so 1000 steps ~3.6 h; IPC 10's
10,000 outer steps do not fit (pass ``--config.steps`` for a reduced budget). An IDC step (10 class
matchings and 8 network steps at width 128) takes ~10 s, so its 200,000 steps do not fit either.
"""
import ml_collections

import jaxdistill as jd
from experiments.configs.common import base, with_protocol

# method: (steps at IPC 1 / 10 / 50, images lr, protocol). DC / DSA: 1000 iterations x outer loops
# (1 / 10 / 50: DatasetCondensation utils.get_loops), lr_img 0.1 (main.py); DM: Iteration 20000,
# lr_img 1.0 (main_DM.py).
PAPER = {
    "dc": ({1: 1000, 10: 10000, 50: 50000}, 0.1, "dc"),
    "dsa": ({1: 1000, 10: 10000, 50: 50000}, 0.1, "dsa"),
    "dm": ({1: 20000, 10: 20000, 50: 20000}, 1.0, "dm"),
    "idc": ({1: 200000, 10: 200000, 50: 200000}, None, "idc"),  # lr: idc_image_lr
}
# Steps per iteration of the paper's code, where it is not 1: DC / DSA's outer loop for the IPC
# (utils.get_loops), IDC's inner loop.
IDC_INNER_LOOP = 100


def steps_per_iteration(method: str, ipc: int) -> int:
  """Steps of this library per iteration of the paper's code (DC / DSA: the outer loop for the IPC;
  IDC: its inner loop of 100; DM: 1)."""
  if method in ("dc", "dsa"):
    return jd.objectives.loops_for_ipc(ipc)[0]
  return IDC_INNER_LOOP if method == "idc" else 1


def idc_image_lr(ipc: int, std: float) -> float:
  """IDC's image learning rate for Fashion-MNIST (``--reproduce``: 1e-4, scaled by ``tune_lr_img`` by
  ipc / 10 and (28 / 32)^2), in pixel units, divided by ``std``^2 for images stored normalized (the
  same SGD steps in pixel space)."""
  return 1e-4 * (ipc / 10) * (28 / 32) ** 2 / std ** 2

# Published Fashion-MNIST ConvNet accuracies (%), (mean, std or None, where). DM, MTT and FRePo: none
# listed here (DM and MTT report no Fashion-MNIST figure; FRePo's is not re-checked).
PUBLISHED = {
    ("dc", 1): (70.5, 0.6, "Zhao et al., ICLR 2021, Table 1"),
    ("dc", 10): (82.3, 0.4, "Zhao et al., ICLR 2021, Table 1"),
    ("dc", 50): (83.6, 0.4, "Zhao et al., ICLR 2021, Table 1"),
    ("dsa", 1): (70.6, 0.6, "Zhao & Bilen, ICML 2021, Table 1"),
    ("dsa", 10): (84.6, 0.3, "Zhao & Bilen, ICML 2021, Table 1"),
    ("dsa", 50): (88.7, 0.2, "Zhao & Bilen, ICML 2021, Table 1"),
    ("idc", 1): (81.0, 0.2, "Kim et al., ICML 2022, its Fashion-MNIST results table"),
    ("idc", 10): (86.0, 0.3, "Kim et al., ICML 2022, its Fashion-MNIST results table"),
    ("idc", 50): (86.2, 0.2, "Kim et al., ICML 2022, its Fashion-MNIST results table"),
    ("kip", 1): (73.8, None, "Nguyen et al., NeurIPS 2021, finite-width ConvNet"),
    ("kip", 10): (86.8, None, "Nguyen et al., NeurIPS 2021, finite-width ConvNet"),
    ("kip", 50): (87.8, None, "Nguyen et al., NeurIPS 2021, finite-width ConvNet"),
}

# Methods whose paper-budget setting is not reproduced here, and why.
NOT_HERE = {
    "kip": "KIP's finite-ConvNet evaluation (neural-tangents ConvNet, MSE) is not reproduced",
    "frepo": "FRePo's evaluation (its own ConvNet and training schedule) is not reproduced",
}


def paper_steps(method: str, ipc: int) -> int:
  """The paper's number of distillation steps (outer steps for DC / DSA)."""
  return PAPER[method][0][ipc]


def get_config(arg: str = "dc,1"):
  method, ipc = arg.split(",")
  ipc = int(ipc)
  if method in NOT_HERE:
    raise ValueError(f"No paper-budget setting for {method!r}: {NOT_HERE[method]}.")
  if method not in PAPER:
    raise ValueError(f"Unknown method {method!r} for the paper table; known: {sorted(PAPER)}.")
  steps, lr, protocol = PAPER[method]
  if ipc not in steps:
    raise ValueError(f"No published Fashion-MNIST setting for {method} at IPC {ipc}; known: "
                     f"{sorted(steps)}.")
  c = base(method, ipc)
  c.steps = steps[ipc]
  c.batch_real = 256
  c.model_kwargs.width = 128
  c.checkpoint_every = 100
  if method == "idc":
    c.batch_real = 64
    c.idc_factor = 2
    c.idc_objective = "idc"
    c.idc = ml_collections.ConfigDict({"inner_loop": IDC_INNER_LOOP, "metric": "l1"})
    lr = idc_image_lr(ipc, jd.data.datasets.KNOWN[c.dataset].std[0])
  c.optimizer_kwargs.learning_rate = lr
  if method != "idc":  # IDC starts from its multi-formation of real images
    # Real images, as DSA's README command and DM's code; DC's main.py starts from noise
    # (--config.init=noise), and its recorded rows started from real images too.
    c.init = "real"
  c.workdir = "runs/paper"
  c.results = ""
  return with_protocol(c, protocol)
