"""Evaluate a set saved by mtt-distillation with jaxdistill.

mtt-distillation's distill.py saves its set as one torch.save per tensor: images_<tag>.pt
([N, C, H, W], normalized with the dataset's mean / std), labels_<tag>.pt ([N] int64) and, in its forks
that learn it, lr_<tag>.pt (the step size). Here a small set is written that way (two real
Fashion-MNIST images per class), read back with jd.io.load_set (NHWC, same values) and evaluated with
jd.evaluate.accuracy at a tiny budget (2 epochs, 1 network: a quick check, not the paper's protocol).

    python examples/evaluate_pytorch_set.py [OUT_DIR]

Needs PyTorch (pip install -e '.[torch]') and Fashion-MNIST (sudo apt-get install dataset-fashion-mnist).
"""
import os
import sys
import tempfile

import jax
import numpy as np
import torch

import jaxdistill as jd

out = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp()
data = jd.data.load("fashion_mnist")

# The PyTorch side, as distill.py saves (here: 2 real images per class, NHWC -> NCHW).
idx = np.concatenate([np.flatnonzero(data.y_train == c)[:2] for c in range(data.num_classes)])
image_syn = torch.tensor(data.x_train[idx].transpose(0, 3, 1, 2))
label_syn = torch.tensor(data.y_train[idx], dtype=torch.long)
syn_lr = torch.tensor(0.01)
torch.save(image_syn.cpu(), os.path.join(out, "images_best.pt"))
torch.save(label_syn.cpu(), os.path.join(out, "labels_best.pt"))
torch.save(syn_lr.detach().cpu(), os.path.join(out, "lr_best.pt"))

# The JAX side: read (zca=False: this set is not ZCA-whitened) and evaluate under MTT's protocol,
# which trains with the set's learned step size, at a tiny budget.
syn = jd.io.load_set(out, zca=False, num_classes=data.num_classes)
print(f"read {syn.images.shape} images, step size {float(np.exp(syn.log_lr)):.4f}")
p = jd.evaluate.protocol("mtt", data.name)
r = jd.evaluate.accuracy(jax.random.key(0), syn, data, model=p.model, num_seeds=1,
                         cfg=p.cfg._replace(epochs=2), model_kwargs=dict(p.model_kwargs),
                         use_learned_lr=p.use_learned_lr)
print(f"test accuracy {100 * r.mean:.2f} ± {100 * r.std:.2f} % (1 network, 2 epochs)")
