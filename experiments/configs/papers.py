"""The papers' settings on CIFAR-10, CIFAR-100 and Tiny-ImageNet, for users with accelerators.

Each ``<method>_<dataset>.py`` config calls one function here with the IPC given after the file name
(``--config experiments/configs/mtt_cifar10.py:10``). Networks: the field's ConvNet (width 128, instance
norm, average pooling; depth 3 at 32x32, depth 4 at 64x64) with ``conv_impl="lax"`` (the accelerator's
native convolution). Evaluation: DC / DSA / DM under their papers' protocols (``jd.evaluate.protocol``:
DC 300 epochs without augmentation, DSA / DM 1000 with DSA, 20 networks), SelMatch under its own
(ResNet-18 BN), the others the standard protocol (ConvNet, DSA, 1000 epochs, 5 networks).

Data (``jaxdistill.data.load``; its module docstring has the details): CIFAR-10 / CIFAR-100 come from
TFDS (the published 170 MB / 169 MB binary tarball, downloaded once into TFDS's data directory; read
without TensorFlow), or offline from ``--config.data_dir=`` holding ``cifar-10-python.tar.gz`` /
``cifar-100-python.tar.gz`` (or the extracted folder). Tiny-ImageNet is not in the TFDS catalogue:
pass ``--config.data_dir=`` with the published ``tiny-imagenet-200.zip`` (237 MB) or its extracted
folder (the 10,000 labelled validation images are the test split, as the papers test on them; class
``i`` is the ``i``-th wnid in sorted order, as ``ImageFolder`` numbers them in the references), or a
``tiny_imagenet.npz`` (``x_train`` [100000, 64, 64, 3] uint8, ``y_train``, ``x_test``, ``y_test``). It
loads under the name ``tiny_imagenet``, normalized with ImageNet's statistics, as the references do;
about 5 GB of host memory as float32.
"""
import ml_collections

from experiments.configs.common import base, trajectory, with_protocol

DATASETS = {
    "cifar10": {"dataset": "cifar10", "depth": 3, "per_class": 5000},
    "cifar100": {"dataset": "cifar100", "depth": 3, "per_class": 500},
    "tiny": {"dataset": "tiny_imagenet", "depth": 4, "per_class": 500},
}


def _setting(table: dict, ipc: int, what: str):
  if ipc not in table:
    raise ValueError(f"No published {what} setting for IPC {ipc}; known: {sorted(table)} (pass "
                     f"--config path.py:IPC).")
  return table[ipc]


def paper_base(method: str, dataset: str, ipc) -> ml_collections.ConfigDict:
  """``common.base`` at paper scale on ``dataset`` (a key of ``DATASETS``)."""
  d = DATASETS[dataset]
  c = base(method, int(ipc))
  c.dataset = d["dataset"]
  c.model_kwargs = ml_collections.ConfigDict({"width": 128, "depth": d["depth"], "conv_impl": "lax"})
  c.eval_model_kwargs = ml_collections.ConfigDict({"convnet": {"width": 128, "depth": d["depth"]}})
  c.batch_real = 256
  c.eval_epochs = 1000
  c.num_seeds = 5
  c.checkpoint_every = 500
  c.image_every = 1000
  c.results = f"experiments/results/papers_{dataset}.md"
  return c


def gradient_matching(method: str, dataset: str, ipc):
  """DC / DSA (Zhao et al. ICLR 2021; Zhao & Bilen ICML 2021): 1000 iterations of the reference's
  (outer, inner) loops for the IPC (1: 1/1, 10: 10/50, 50: 50/10), images SGD lr 0.1 momentum 0.5, 256
  real images per class, starting from noise (DC's main.py) or real images (DSA's README command),
  evaluated under the paper's protocol (``jd.evaluate.protocol``)."""
  c = paper_base(method, dataset, ipc)
  c.optimizer_kwargs = ml_collections.ConfigDict({"learning_rate": 0.1, "momentum": 0.5})
  outer = _setting({1: 1, 10: 10, 50: 50}, c.ipc, method.upper())
  c.steps = 1000 * outer  # one loop step is one outer step
  c.init = "noise" if method == "dc" else "real"  # main.py's default; DSA's README passes --init real
  return with_protocol(c, method)  # DC: 300 epochs without augmentation; DSA: 1000 with DSA


def dm(dataset: str, ipc):
  """DM (Zhao & Bilen WACV 2023): 20,000 iterations, images SGD lr 1 momentum 0.5, 256 real images per
  class."""
  c = paper_base("dm", dataset, ipc)
  c.steps = 20000
  return with_protocol(c, "dm")


# MTT (Cazenavette et al., CVPR 2022): (syn_steps, expert_epochs, max_start_epoch, batch_syn, zca,
# lr_img, lr_lr, lr_teacher). CIFAR-100 IPC 1 is the MTT README's command; the others follow a public
# list of MTT's per-setting commands (check them against the paper's hyperparameter table). Tiny IPC 50:
# batch_syn 250 where the list has 300, since a batch must divide the 10,000 synthetic images here.
MTT = {
    "cifar10": {1: (50, 2, 2, 0, True, 100, 1e-7, 0.01),
                10: (30, 2, 20, 0, True, 100, 1e-5, 0.001),
                50: (30, 2, 40, 0, False, 1000, 1e-5, 0.001)},
    "cifar100": {1: (20, 3, 20, 0, True, 1000, 1e-5, 0.01),
                 10: (20, 2, 20, 0, False, 1000, 1e-5, 0.01),
                 50: (80, 2, 40, 125, True, 1000, 1e-5, 0.01)},
    "tiny": {1: (10, 2, 10, 0, False, 10000, 1e-4, 0.01),
             10: (20, 2, 40, 200, False, 10000, 1e-4, 0.01),
             50: (20, 2, 40, 250, False, 10000, 1e-4, 0.01)},
}


def _experts(c):
  """100 experts x 50 epochs (MTT's buffer.py), more epochs when the segments need them."""
  need = c.mtt.max_start_epoch + c.mtt.expert_epochs
  c.experts.update({"num": 100, "epochs": max(50, need), "batch_size": 256})
  return c


def mtt(dataset: str, ipc):
  """MTT at the table's setting, 5,000 iterations (MTT's default ``Iteration``)."""
  c = paper_base("mtt", dataset, ipc)
  steps, m, start, bs, zca, lr_img, lr_lr, lr_t = _setting(MTT[dataset], c.ipc, "MTT")
  c.zca = zca
  trajectory(c, steps, m, start, lr_img, lr_lr, lr_teacher=lr_t, batch_syn=bs)
  c.steps = 5000
  return _experts(c)


# DATM (Guo et al., ICLR 2024), its repository's configs/<dataset>/ConvIN/IPC<n>.yaml: (syn_steps,
# expert_epochs, min_start_epoch, current_max_start_epoch (0: no growth), max_start_epoch,
# expansion_end_epoch, batch_syn (0: all rows), lr_img, lr_lr, lr_y), from the files' versions that
# name the fields DATM.py reads (current_max_start_epoch, expansion_end_epoch, Sequential_Generation:
# Tiny IPC 10 / 50 without growth). All use ZCA and lr_teacher 0.01, 10,000 iterations, labels SGD
# momentum 0.9, and skip a step whose loss exceeds their threshold (1.1 on CIFAR-10 IPC 1, else 1).
# Their experts (buffer_FTD.py) train with GSAM (rho 0.01, alpha 0.4) around SGD; the experts here
# train with plain SGD, as MTT's buffer.py.
DATM = {
    "cifar10": {1: (80, 2, 0, 0, 4, 0, 0, 100, 1e-7, 5.0),
                10: (80, 2, 0, 10, 20, 1000, 0, 100, 1e-5, 2.0),
                50: (80, 2, 0, 20, 40, 2000, 0, 1000, 1e-5, 2.0)},
    "cifar100": {1: (40, 3, 0, 20, 30, 1000, 0, 1000, 1e-5, 10.0),
                 10: (80, 2, 0, 30, 50, 2000, 0, 1000, 1e-5, 10.0),
                 50: (80, 2, 20, 0, 70, 0, 1000, 1000, 1e-5, 10.0)},
    "tiny": {1: (40, 2, 0, 15, 20, 2000, 0, 10000, 1e-4, 10.0),
             10: (40, 2, 10, 0, 50, 0, 500, 100, 1e-4, 10.0),
             50: (20, 2, 40, 0, 70, 0, 1000, 100, 1e-4, 10.0)},
}


def datm(dataset: str, ipc):
  """DATM at its repository's setting: soft labels from the experts' last epoch (its
  ``Label_Model_Timestamp = -1``, the last checkpoint of the buffer)."""
  c = paper_base("datm", dataset, ipc)
  (steps, m, lo, grow, start, expand, bs, lr_img, lr_lr, lr_y) = _setting(DATM[dataset], c.ipc, "DATM")
  c.zca = True
  trajectory(c, steps, m, start, lr_img, lr_lr, lr_teacher=0.01, batch_syn=bs, min_start_epoch=lo,
             initial_max_start_epoch=grow, expansion_steps=expand)
  c.label_optimizer_kwargs = ml_collections.ConfigDict({"learning_rate": lr_y, "momentum": 0.9})
  c.steps = 10000
  c = _experts(c)
  c.datm = ml_collections.ConfigDict({
      "label_epoch": c.experts.epochs, "threshold": 1.1 if (dataset, c.ipc) == ("cifar10", 1) else 1.0,
      "pix_init": "real" if (dataset, c.ipc) == ("cifar100", 50) else "samples_predicted_correctly"})
  return c


# SelMatch (Lee & Chung, ICML 2024): (alpha, beta) by IPC, beta in the reference code's unit (the window
# starts int(beta * IPC) images from the hardest of each class).
SELMATCH = {
    "cifar10": {250: (0.6, 0.5), 500: (0.2, 0.3), 1000: (0.1, 0.2), 1500: (0.1, 0.2)},
    "cifar100": {25: (0.8, 0.8), 50: (0.6, 0.7), 100: (0.3, 0.6), 150: (0.2, 0.4)},
    "tiny": {50: (0.6, 0.8), 100: (0.5, 0.7)},
}


def selmatch(dataset: str, ipc):
  """SelMatch at its repository's setting (``distill.py``'s defaults and ``scripts/``): trajectory
  matching with ConvNetBN (depth 4 on Tiny, its ConvNetD4BN) on 100 experts x 100 epochs (buffer.py,
  ``scripts/make_buffer``), no ZCA, syn_steps 55 (20 on Tiny), expert_epochs 2, segments starting up to
  epoch 80, batch_syn 125, lr_img 1000 (10,000 on CIFAR-10 at IPC 1000 and 1500), the step size learned
  from 0.001 with lr_lr 1e-5, 10,000 iterations; the window / partial update of the table; evaluated by
  SelMatch's protocol (ResNet-18 BN, lr 0.1 cosine, batch 128, round(50 / ratio) epochs, 5 networks)
  with combined augmentation, and coverage. What differs: the difficulty comes from this run's experts
  (first-learned epochs; forgetting events on Tiny, as its script), not the reference's C-score files
  (Tiny is evaluated on ``resnet18bn_tiny``, its ResNet18BN_Tiny), and the final set is evaluated,
  where the reference reports the checkpoint (iteration 0, 500, ..., 10,000) with the best test
  accuracy (``distill.py`` keeps ``images_best.pt``): choosing on test images is left out here."""
  c = paper_base("selmatch", dataset, ipc)
  alpha, beta = _setting(SELMATCH[dataset], c.ipc, "SelMatch")
  c.model = "convnet_bn"
  c.zca = False
  lr_img = 10000.0 if dataset == "cifar10" and c.ipc >= 1000 else 1000.0
  trajectory(c, 20 if dataset == "tiny" else 55, 2, 80, lr_img, 1e-5, lr_teacher=0.001, batch_syn=125)
  c.steps = 10000
  c.experts.update({"num": 100, "epochs": 100, "batch_size": 256})
  c.selmatch = ml_collections.ConfigDict({"alpha": alpha, "beta": beta, "unit": "code",
                                          "difficulty": "forgetting" if dataset == "tiny" else
                                          "first_learned"})
  c.combined_augment = True
  c.evals = ("protocol", "coverage")
  c.coverage_sample = 10000
  return with_protocol(c, "selmatch", ratio=c.ipc / DATASETS[dataset]["per_class"])
