"""MTT (Cazenavette et al., CVPR 2022): from an expert's parameters at a random start epoch, a student
trains ``c.mtt.syn_steps`` steps on the synthetic set with a learned step size, and its distance to the
expert ``c.mtt.expert_epochs`` later (normalized by the expert's move) is minimized. Experts come from
``c.experts`` (trained first where missing)."""
from experiments import registry as r

DISTILL_FIELDS = ("mtt",)


def build(c, data):
  model = r.model_of(c, data)
  traj = r.experts(c, data, model)
  obj, sampler = r.trajectory_parts(c, data, model, traj)
  return r.Method(obj, r.optimizer(c, log_lr=True), sampler, r.with_step_size(c, r.random_init(c, data)),
                  evaluators=r.evaluators(c, data, own=r.trajectory_evaluators(c, data, model, traj)))


def smoke(c) -> dict:
  return r.trajectory_smoke(c)
