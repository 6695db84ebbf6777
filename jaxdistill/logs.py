"""Run outputs: metrics to JSONL and TensorBoard event files, synthetic images to PNG grids."""
from __future__ import annotations

import json
import os
import time
from typing import Optional, Sequence

import numpy as np


class MetricLogger:
  """Appends ``{"step": s, **metrics}`` lines to ``<log_dir>/metrics.jsonl`` and writes TensorBoard
  scalars (tensorboardX, no TensorFlow needed) to ``log_dir``."""

  def __init__(self, log_dir: str, tensorboard: bool = True):
    os.makedirs(log_dir, exist_ok=True)
    self.path = os.path.join(log_dir, "metrics.jsonl")
    self._session = time.time()  # every JSONL row names the session (logger) that wrote it
    self._tb = None
    if tensorboard:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(log_dir)

  def write(self, step: int, metrics: dict) -> None:
    row = {"step": int(step), **{k: float(v) for k, v in metrics.items() if k != "step"}}
    with open(self.path, "a") as f:
      f.write(json.dumps({**row, "session": self._session}) + "\n")
    if self._tb is not None:
      for k, v in row.items():
        if k != "step":
          self._tb.add_scalar(k, v, int(step))
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_metrics(log_dir: str, every_row: bool = False) -> list:
  """The rows a ``MetricLogger`` wrote to ``<log_dir>/metrics.jsonl``, one per step in step order.

  A resumed run logs again the steps after its last checkpoint; the row written last wins. With
  ``every_row`` every row in the order written, those of the steps a later session ran again
  included (what each session spent: ``sessions``).
  """
  rows, seq = {}, []
  with open(os.path.join(log_dir, "metrics.jsonl")) as f:
    for n, line in enumerate(f, 1):
      try:
        row = json.loads(line)
        rows[int(row["step"])] = row
      except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{f.name} line {n} is not a metrics row: {line[:80]!r}") from e
      seq.append(row)
  return seq if every_row else [rows[s] for s in sorted(rows)]


def block_means(rows: Sequence[dict], key: str, block: int) -> list:
  """``[(first step, mean of key)]`` over the logged rows of steps 1 to ``block``, ``block + 1`` to
  ``2 block``, ...: the trend of a noisy per-step metric such as a distillation loss. Steps count
  updates (``distill.run`` logs the metrics of the n-th update as step n), so a run of ``6 * block``
  steps has six blocks."""
  if block < 1:
    raise ValueError(f"block must be a positive number of steps, got {block}")
  out = {}
  for r in rows:
    if key in r:
      out.setdefault((int(r["step"]) - 1) // block, []).append(float(r[key]))
  return [(b * block + 1, float(np.mean(v))) for b, v in sorted(out.items())]


def image_grid(images: np.ndarray, mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,),
               nrow: Optional[int] = None, pad: int = 2) -> np.ndarray:
  """Un-normalizes ``images`` ``[N, H, W, C]`` and tiles them into a ``uint8`` grid ``[h, w, C]``.

  ``nrow`` images per row (default: ceil(sqrt(N))), e.g. the IPC so that each row is one class.
  """
  x = np.asarray(images, np.float32) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
  x = np.clip(np.nan_to_num(x), 0.0, 1.0)
  n, h, w, c = x.shape
  nrow = nrow or int(np.ceil(np.sqrt(n)))
  ncol = -(-n // nrow)
  grid = np.ones((ncol * (h + pad) + pad, nrow * (w + pad) + pad, c), np.float32)
  for i in range(n):
    r, q = divmod(i, nrow)
    grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = x[i]
  return (grid * 255 + 0.5).astype(np.uint8)


def save_grid(path: str, images: np.ndarray, mean=(0.0,), std=(1.0,), nrow: Optional[int] = None,
              scale: int = 2) -> str:
  """Writes ``images`` as a PNG grid (see ``image_grid``), each pixel ``scale`` x ``scale``."""
  from PIL import Image
  grid = image_grid(images, mean, std, nrow)
  if scale > 1:
    grid = grid.repeat(scale, 0).repeat(scale, 1)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
  return path


def read_grid(path: str, image_shape: Sequence[int], nrow: int, num: Optional[int] = None,
              mean=(0.0,), std=(1.0,), scale: int = 2, pad: int = 2) -> np.ndarray:
  """The images of a grid written by ``save_grid`` (same ``nrow``, ``scale`` and ``pad``), normalized
  again with ``mean`` / ``std``: ``[num, H, W, C]`` float32, ``num`` default every cell of the grid.

  The PNG holds 8-bit pixels clipped to [0, 1], so values come back to within 1/255 of the written
  ones (clipped ones at the bound). Refuses a file whose size is not such a grid's, and a grid whose
  padding is not white (another layout was given)."""
  from PIL import Image
  h, w, c = (int(s) for s in image_shape)
  try:
    with Image.open(path) as im:
      grid = np.asarray(im)
  except FileNotFoundError:
    raise
  except OSError as e:
    raise ValueError(f"{path} is not a readable PNG: {e}") from e
  if grid.ndim == 2:
    grid = grid[..., None]
  if grid.shape[-1] != c:
    raise ValueError(f"{path} has {grid.shape[-1]} channel(s); image_shape {tuple(image_shape)} "
                     f"asks for {c}.")
  rows_px, cols_px = grid.shape[0] / scale, grid.shape[1] / scale
  ncol = (rows_px - pad) / (h + pad)
  if cols_px != nrow * (w + pad) + pad or ncol != int(ncol) or ncol < 1:
    raise ValueError(f"{path} ({grid.shape[1]} x {grid.shape[0]} pixels) is not a grid of {h} x {w} "
                     f"images, {nrow} per row, pad {pad}, scale {scale}.")
  grid = grid[::scale, ::scale].astype(np.float32) / 255.0
  ncol = int(ncol)
  num = nrow * ncol if num is None else int(num)
  if not 0 < num <= nrow * ncol:
    raise ValueError(f"num={num}: the grid in {path} holds {nrow * ncol} cells.")
  border = np.ones(grid.shape[:2], bool)
  for r in range(ncol):
    border[pad + r * (h + pad):pad + r * (h + pad) + h] = False
  if not np.all(grid[border] == 1.0):
    raise ValueError(f"{path}: the rows between images are not the white padding of a grid of {h}-"
                     f"pixel images with pad {pad} and scale {scale}.")
  x = np.stack([grid[pad + r * (h + pad):pad + r * (h + pad) + h,
                     pad + q * (w + pad):pad + q * (w + pad) + w]
                for r, q in (divmod(i, nrow) for i in range(num))])
  return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def sessions(rows: Sequence[dict]) -> list:
  """The sessions a resumed run's logged rows came from: ``[(first step, last step, seconds)]``.

  Rows name their session (``MetricLogger``'s ``session``); rows written before loggers did are split
  wherever ``sec`` (counted from each session's start) goes back. ``seconds`` is the session's time up
  to its last logged step, compilation included: its last ``sec``, summed over the segments of a
  session that trained in several calls (its ``sec`` going back, each call counting from its start)."""
  out, names, offset, last = [], [], 0.0, 0.0
  for r in rows:
    name = r.get("session")
    same = bool(out) and name == names[-1] and (
        name is not None or (r["sec"] >= last and r["step"] > out[-1][1]))
    if same:
      if r["sec"] < last:  # a named session's next segment: its clock restarted
        offset = out[-1][2]
      out[-1] = (out[-1][0], r["step"], offset + r["sec"])
    else:
      offset = 0.0
      out.append((r["step"], r["step"], r["sec"]))
      names.append(name)
    last = r["sec"]
  return out


def seconds_per_step(rows: Sequence[dict]) -> Optional[float]:
  """Median seconds per step between consecutive logged rows (``None`` with fewer than two).

  A row's ``sec`` counts from the start of the session that logged it, so across a resume the
  difference is meaningless; the median over all intervals leaves those few out, where a total
  would not (a session stopped before it finished would be missing from it).
  """
  rates = [(b["sec"] - a["sec"]) / (b["step"] - a["step"]) for a, b in zip(rows, rows[1:])
           if b["step"] > a["step"] and b["sec"] > a["sec"]]
  return float(np.median(rates)) if rates else None
