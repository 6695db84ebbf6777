"""Selection of real images: coreset baselines (and, for SelMatch, difficulty scores and windows)."""
from jaxdistill.selection import scores
from jaxdistill.selection.coreset import (METHODS, average, embed, herding, herding_indices, k_center,
                                          k_means, kcenter_indices, kmeans, random, random_indices,
                                          select)
from jaxdistill.selection.window import (DEFAULT_BETAS, UNITS, difficulty_order, window_indices, window_init,
                                         window_search, window_start)
