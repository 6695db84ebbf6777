"""Datasets (local IDX / npz, TFDS), ZCA whitening and class-balanced sampling."""
from jaxdistill.data.datasets import (KNOWN, DataError, denormalize, load, names, read_idx, save_npz,
                                      validate_images, validate_labels)
from jaxdistill.data.sampling import class_indices, sample_balanced, subset_per_class
from jaxdistill.data.zca import ZCA, Whitening, apply_zca, fit_zca, invert_zca, whiten_dataset
