"""Class-conditional diffusion (a small pixel-space DiT) and Minimax Diffusion (Gu et al., CVPR 2024).

- ``model``: the DiT (adaLN-Zero, null class for classifier-free guidance, DiffFit gammas);
- ``gaussian``: schedules, ``q_sample``, the epsilon loss, DDPM / DDIM sampling with guidance;
- ``minimax``: per-class ring-buffer memories and the representativeness / diversity terms;
- ``train``: one jitted step for pretraining and for Minimax fine-tuning (DiffFit's optax mask),
  orbax checkpoints with exact resume;
- ``sample``: ``synthesize`` returns a ``SyntheticSet`` of IPC images per class in the dataset's space.
"""
from jaxdistill.diffusion import gaussian, minimax, model, sample, train
from jaxdistill.diffusion.gaussian import Schedule, make_schedule
from jaxdistill.diffusion.minimax import Memory, init_memory
from jaxdistill.diffusion.model import DiT
from jaxdistill.diffusion.sample import synthesize, to_data_space, to_model_space
from jaxdistill.diffusion.train import (MinimaxConfig, TrainState, difffit_tx, init_params,
                                        init_state, make_step, run, trainable_tx)
