"""Class-conditional diffusion (a small pixel-space DiT or UNet) and Minimax Diffusion (Gu et al., CVPR 2024).

- ``model``: the DiT (adaLN-Zero, null class for classifier-free guidance, DiffFit gammas);
- ``unet``: a UNet in the DDPM / ADM design (scale-shift conditioning, same interface as the DiT);
- ``get_model(name, num_classes, **kwargs)``: ``"dit"`` or ``"unet"`` by name;
- ``gaussian``: schedules, ``q_sample``, the epsilon loss, DDPM / DDIM sampling with guidance;
- ``minimax``: per-class ring-buffer memories and the representativeness / diversity terms;
- ``autoencoder``: a small convolutional autoencoder whose latents can be the terms' space (the
  authors compute them on Stable Diffusion VAE latents, the space their DiT denoises);
- ``train``: one jitted step for pretraining and for Minimax fine-tuning (DiffFit's optax mask),
  orbax checkpoints with exact resume;
- ``sample``: ``synthesize`` returns a ``SyntheticSet`` of IPC images per class in the dataset's space.
"""
from jaxdistill.diffusion import autoencoder, gaussian, minimax, model, sample, train, unet
from jaxdistill.diffusion.autoencoder import AutoEncoder, encoder_fn, train_autoencoder
from jaxdistill.diffusion.gaussian import Schedule, make_schedule
from jaxdistill.diffusion.minimax import Memory, init_memory
from jaxdistill.diffusion.model import DiT
from jaxdistill.diffusion.unet import UNet
from jaxdistill.diffusion.sample import synthesize, to_data_space, to_model_space
from jaxdistill.diffusion.train import (MinimaxConfig, TrainState, difffit_tx, init_params,
                                        init_state, make_step, run, trainable_tx)

MODELS = {"dit": DiT, "unet": UNet}


def get_model(name: str, num_classes: int, **kwargs):
  """The diffusion model ``name`` (``"dit"`` or ``"unet"``) for ``num_classes`` classes; ``kwargs`` are
  its attributes (an unknown one raises TypeError)."""
  if name not in MODELS:
    raise ValueError(f"Unknown diffusion model {name!r}; choose one of {sorted(MODELS)}.")
  return MODELS[name](num_classes, **kwargs)
