"""Data parallelism: one device mesh over every device, the real batch split along its batch axis.

The per-device program is pmap's (each device computes the loss on its shard of the real batch and the
results are averaged with a collective), written in today's form: ``jax.shard_map`` over a
``jax.make_mesh`` mesh with ``NamedSharding``. Multi-host runs call ``initialize()`` first
(``jax.distributed.initialize``); the mesh then spans every process's devices.
"""
from __future__ import annotations

import os
from typing import Optional

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> None:
  """Joins a multi-host run through ``jax.distributed.initialize``.

  Arguments left out come from the environment: ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` where set
  (read here), ``JAX_COORDINATOR_ADDRESS`` (read by JAX), else JAX detects the cluster (SLURM, Cloud
  TPU, ...). Call it before any other JAX work; single-host runs never need it.
  """
  env = lambda name: int(os.environ[name]) if os.environ.get(name) else None
  num_processes = env("JAX_NUM_PROCESSES") if num_processes is None else num_processes
  process_id = env("JAX_PROCESS_ID") if process_id is None else process_id
  jax.distributed.initialize(coordinator_address, num_processes, process_id)


def data_mesh(num_devices: Optional[int] = None) -> jax.sharding.Mesh:
  """A 1-D mesh with axis ``"data"`` over the first ``num_devices`` devices (default: all)."""
  n = jax.device_count() if num_devices is None else num_devices
  if not 1 <= n <= jax.device_count():
    raise ValueError(f"Asked for {n} devices; {jax.device_count()} are available.")
  return jax.make_mesh((n,), (DATA_AXIS,), axis_types=(AxisType.Auto,),
                       devices=jax.devices()[:n])


def batch_spec(ndim: int, batch_axis: int) -> P:
  """``PartitionSpec`` splitting axis ``batch_axis`` of an ``ndim``-array over the data axis."""
  spec = [None] * ndim
  spec[batch_axis] = DATA_AXIS
  return P(*spec)


def batch_sharding(mesh, batch, batch_axis: int):
  """A pytree of ``NamedSharding`` splitting every leaf of ``batch`` along ``batch_axis``."""
  return jax.tree.map(lambda x: NamedSharding(mesh, batch_spec(x.ndim, batch_axis)), batch)


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def replicate(tree, mesh):
  """Places a pytree of arrays (typed PRNG keys included), equal on every process, replicated over
  ``mesh``. On one process this is ``jax.device_put``; across processes each one fills its own devices
  from its host copy (``jax.make_array_from_callback``)."""
  sharding = replicated(mesh)
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)

  def one(x):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(one(jax.random.key_data(x)), impl=jax.random.key_impl(x))
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return x if x.sharding == sharding else jax.device_put(x, sharding)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

  return jax.tree.map(one, tree)


def check_divisible(batch, batch_axis: int, mesh) -> None:
  n = mesh.devices.size
  for x in jax.tree.leaves(batch):
    if x.shape[batch_axis] % n:
      raise ValueError(f"The real batch's axis {batch_axis} has size {x.shape[batch_axis]}, which "
                       f"does not split evenly over {n} devices; choose a batch size divisible by {n}.")
