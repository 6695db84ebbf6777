"""Distillation objectives: each a pure loss over a synthetic set (see ``base.Objective``)."""
from jaxdistill.objectives.base import Objective, pmean
from jaxdistill.objectives.distribution import distribution_matching
from jaxdistill.objectives.gradient import (gradient_distance, gradient_matching, idc_gradient_distance,
                                            idc_matching, IDCState, loops_for_ipc,
                                            LOOPS_BY_IPC)
from jaxdistill.models.nets import NetFns, flax_net
from jaxdistill.objectives.trajectory import (soft_labels_from_experts, trajectory_matching,
                                              trajectory_sampler)
from jaxdistill.objectives.kernel import (FRePoState, frepo, kip, kip_labels, krr_test_accuracy,
                                          label_margin)
from jaxdistill.objectives.unrolled import dataset_distillation, dd_train
