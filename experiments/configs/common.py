"""Defaults shared by the distillation configs (CPU-sized; see each config's docstring), and the
blocks of the trajectory-matching methods."""
import ml_collections

import jaxdistill as jd


def base(method: str, ipc: int) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = method
  c.dataset = "fashion_mnist"
  c.data_dir = ""  # a directory of IDX / npz files (or an npz path) instead of the default source
  c.max_per_class = 0  # > 0: a class-balanced training subset of this many images per class
  c.zca = False
  c.ipc = ipc
  c.seed = 0
  c.model = "convnet"
  # conv_impl "auto": "patches" on CPU (fast gradients inside scans), "lax" on accelerators; DM runs
  # "lax" on CPU too. An explicit "patches" / "lax" / "shift" is used everywhere.
  c.model_kwargs = ml_collections.ConfigDict({"width": 32, "depth": 3, "conv_impl": "auto"})
  c.steps = 200
  c.batch_real = 64  # real images per class per step (reference: 256)
  c.optimizer = "sgd"
  c.optimizer_kwargs = ml_collections.ConfigDict({"learning_rate": 1.0, "momentum": 0.5})
  c.outer_loop = 0  # 0: the reference's outer loop for the IPC (DC/DSA)
  c.inner_loop = 0  # 0: the reference's inner loop for the IPC (DC/DSA)
  c.evals = ("protocol",)
  c.eval_protocol = ""  # a paper's protocol by name (with_protocol); "": the fields below
  c.eval_models = ("convnet",)
  c.eval_model_kwargs = ml_collections.ConfigDict({"convnet": {"width": 32, "depth": 3}})
  c.eval_epochs = 300
  c.eval_augment = "dsa"
  c.num_seeds = 3
  c.checkpoint_every = 50
  c.image_every = 0
  c.workdir = "runs"
  c.results = "experiments/results/distill_fashion_mnist.md"
  return c


def trajectory(c, syn_steps, expert_epochs, max_start_epoch, lr_img, lr_lr, lr_teacher=0.01,
               batch_syn=0, min_start_epoch=0, initial_max_start_epoch=0, expansion_steps=0,
               expert_lr=0.01):
  """Adds MTT's hyperparameters (the papers' names) to ``c``: images SGD ``lr_img`` momentum 0.5, the
  step size SGD ``lr_lr`` momentum 0.5 in step-size space, initialized to ``lr_teacher`` (the
  ``--lr_teacher`` of MTT's ``distill.py``); experts trained with ``expert_lr`` (``buffer.py``'s
  ``--lr_teacher``, 0.01 for every published setting: the MTT README's "default learning rate for all
  of our experts", SelMatch's buffers alike; DATM's buffer_FTD.py wraps that SGD in GSAM, which the
  experts here do not) for at least the epochs the segments need
  (``c.experts``)."""
  c.optimizer = "sgd"
  c.optimizer_kwargs = ml_collections.ConfigDict({"learning_rate": lr_img, "momentum": 0.5})
  c.lr_optimizer_kwargs = ml_collections.ConfigDict({"learning_rate": lr_lr, "momentum": 0.5})
  c.mtt = ml_collections.ConfigDict({
      "syn_steps": syn_steps, "expert_epochs": expert_epochs, "max_start_epoch": max_start_epoch,
      "min_start_epoch": min_start_epoch, "batch_syn": batch_syn, "lr_teacher": lr_teacher,
      "initial_max_start_epoch": initial_max_start_epoch, "expansion_steps": expansion_steps})
  c.experts = ml_collections.ConfigDict({
      "dir": "", "num": 100, "epochs": 50, "lr": expert_lr, "batch_size": 256, "seed": 0,
      "progress": True})
  return c


def with_protocol(c, name: str, ratio=None):
  """Sets ``c``'s evaluation fields to a paper's protocol (``jaxdistill.evaluate.protocol``: "dc",
  "dsa", "dm", "mtt", "idc", "selmatch" with the set's share ``ratio`` of the training set; IDC's
  reads ``c.ipc`` and ``c.idc_factor``, so set them first): its
  network, epochs, augmentation, training hyperparameters and number of networks, and names it in
  ``c.eval_protocol`` (a later change of one of these fields is refused)."""
  p = jd.evaluate.protocol(name, c.dataset, ratio=ratio, ipc=c.get("ipc"), factor=c.get("idc_factor"))
  default = jd.evaluate.EvalConfig()
  c.eval_protocol = name
  if ratio is not None:
    c.eval_protocol_ratio = float(ratio)
  c.eval_models = (p.model,)
  c.eval_model_kwargs = ml_collections.ConfigDict({p.model: dict(p.model_kwargs)})
  c.eval_epochs = p.cfg.num_epochs()
  c.eval_augment = p.cfg.augment
  c.num_seeds = p.num_models
  kwargs = {f: getattr(p.cfg, f) for f in jd.evaluate.PROTOCOL_FIELDS
            if f != "augment" and getattr(p.cfg, f) != getattr(default, f)}
  if kwargs or "eval_kwargs" in c:
    c.eval_kwargs = ml_collections.ConfigDict({**dict(c.get("eval_kwargs", {})), **kwargs})
  return c
