"""SelMatch (Lee & Chung, ICML 2024): the difficulty window (``c.selmatch.beta``, in the reference code's
unit unless ``c.selmatch.unit`` says otherwise; difficulty ``c.selmatch.difficulty``, see
``registry.difficulty_scores``) of real images as initialization, the easier ``alpha``
of each class distilled by MTT and the rest frozen (partial updates); its protocol evaluation applies
the combined augmentation when ``c.combined_augment``."""
import numpy as np

import jaxdistill as jd
from experiments import registry as r

# The random baseline's coverage halves follow the difficulty score (the rest of "selmatch" does not
# touch it).
BASELINE_FIELDS = {"coverage": ("selmatch.difficulty",)}
DISTILL_FIELDS = ("mtt", "selmatch")


def build(c, data):
  model = r.model_of(c, data)
  traj = r.experts(c, data, model)
  s = c.selmatch
  scores = r.difficulty_scores(r.expert_dir(c), traj.experts, traj.num_epochs,
                               s.get("difficulty", "first_learned"))
  init = jd.selection.window_init(scores, data.x_train, data.y_train, data.num_classes, c.ipc,
                                  s.beta, unit=s.get("unit", "code"))
  mask = jd.partial_updates.selmatch_mask(np.asarray(init.labels), data.num_classes, s.alpha)
  obj, sampler = r.trajectory_parts(c, data, model, traj)
  return r.Method(obj, r.optimizer(c, log_lr=True), sampler, r.with_step_size(c, init), mask=mask,
                  evaluators=r.evaluators(c, data, own=r.trajectory_evaluators(c, data, model, traj,
                                                                               scores)))


def smoke(c) -> dict:
  return r.trajectory_smoke(c)
