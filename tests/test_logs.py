"""Run logs: what a MetricLogger writes reads back, resumed steps once, the last written winning."""
import os

import numpy as np
import pytest

from jaxdistill import logs


def test_read_metrics_keeps_the_last_row_of_a_relogged_step_and_block_means(tmp_path):
  d = str(tmp_path / "logs")
  log = logs.MetricLogger(d, tensorboard=False)
  for s in (10, 20, 30, 40):
    log.write(s, {"loss": np.float32(s), "lr": 0.1})
  # a run killed after step 40 and resumed from its checkpoint at step 25 logs 30 and 40 again
  for s in (30, 40, 50):
    log.write(s, {"loss": s + 1.0, "lr": 0.2})
  log.close()
  rows = logs.read_metrics(d)
  assert [r["step"] for r in rows] == [10, 20, 30, 40, 50]
  assert [r["loss"] for r in rows] == [10.0, 20.0, 31.0, 41.0, 51.0]
  # steps 1-20, 21-40, 41-60
  assert logs.block_means(rows, "loss", 20) == [(1, 15.0), (21, 36.0), (41, 51.0)]
  assert logs.block_means(rows, "missing", 20) == []
  with pytest.raises(ValueError, match="block"):
    logs.block_means(rows, "loss", 0)


def test_read_metrics_names_a_corrupt_line(tmp_path):
  d = str(tmp_path)
  with open(os.path.join(d, "metrics.jsonl"), "w") as f:
    f.write('{"step": 0, "loss": 1.0}\n{"step": 10, "lo')
  with pytest.raises(ValueError, match="line 2"):
    logs.read_metrics(d)


def test_seconds_per_step_is_the_median_interval_and_skips_a_resume():
  rows = [{"step": 10, "sec": 30.0}, {"step": 20, "sec": 50.0}, {"step": 30, "sec": 70.0},
          # resumed from step 25: this session's clock restarted (restore and compile in its first row)
          {"step": 40, "sec": 45.0}, {"step": 50, "sec": 66.0}, {"step": 60, "sec": 87.0}]
  assert logs.seconds_per_step(rows) == pytest.approx(2.05)  # median of 2.0, 2.0, 2.1, 2.1
  assert logs.seconds_per_step(rows[:1]) is None


def test_sessions_split_a_resumed_run_where_its_clock_restarts():
  """A resumed run's rows: each session's ``sec`` counts from its own start."""
  rows = [{"step": 10, "sec": 5.0}, {"step": 20, "sec": 9.0}, {"step": 30, "sec": 2.0},
          {"step": 40, "sec": 6.5}, {"step": 50, "sec": 1.0}]
  assert logs.sessions(rows) == [(10, 20, 9.0), (30, 40, 6.5), (50, 50, 1.0)]
  assert logs.sessions([]) == []
  # Rows that name their session split there even when a short session's clock does not go back.
  named = [{"step": 1, "sec": 2.0, "session": 100.0}, {"step": 2, "sec": 2.5, "session": 200.0},
           {"step": 3, "sec": 3.0, "session": 200.0}]
  assert logs.sessions(rows[:2] + named) == [(10, 20, 9.0), (1, 1, 2.0), (2, 3, 3.0)]
  # One session that trained in two calls (segments), each call's clock from its own start: summed.
  segmented = [{"step": 5, "sec": 4.0, "session": 1.0}, {"step": 10, "sec": 8.0, "session": 1.0},
               {"step": 15, "sec": 3.0, "session": 1.0}, {"step": 20, "sec": 7.0, "session": 1.0},
               {"step": 25, "sec": 2.0, "session": 2.0}]
  assert logs.sessions(segmented) == [(5, 20, 15.0), (25, 25, 2.0)]


def test_metric_logger_rows_name_their_session(tmp_path):
  for _ in range(2):  # two sessions of one run
    logger = logs.MetricLogger(str(tmp_path), tensorboard=False)
    logger.write(len(logs.read_metrics(str(tmp_path))) + 1 if os.path.exists(tmp_path / "metrics.jsonl")
                 else 1, {"loss": 1.0, "sec": 0.1})
    logger.close()
  assert len(logs.sessions(logs.read_metrics(str(tmp_path)))) == 2


def test_read_metrics_gives_every_row_of_a_resumed_run_in_the_order_written(tmp_path):
  """A session stopped after step 3 (its last checkpoint at 2); the next ran step 3 again."""
  first = logs.MetricLogger(str(tmp_path), tensorboard=False)
  for step, sec in ((1, 5.0), (2, 6.0), (3, 7.0)):
    first.write(step, {"loss": 1.0, "sec": sec})
  second = logs.MetricLogger(str(tmp_path), tensorboard=False)
  second._session += 1.0  # two loggers made within the same clock tick still name two sessions
  for step, sec in ((3, 2.0), (4, 3.0)):
    second.write(step, {"loss": 0.5, "sec": sec})
  latest = logs.read_metrics(str(tmp_path))
  assert [(r["step"], r["sec"]) for r in latest] == [(1, 5.0), (2, 6.0), (3, 2.0), (4, 3.0)]
  every = logs.read_metrics(str(tmp_path), every_row=True)
  assert [(r["step"], r["sec"]) for r in every] == [(1, 5.0), (2, 6.0), (3, 7.0), (3, 2.0), (4, 3.0)]
  # the first session's time includes its step 3, which the second ran again
  assert logs.sessions(every) == [(1, 3, 7.0), (3, 4, 3.0)]


def test_read_grid_gives_back_the_images_save_grid_wrote(tmp_path):
  rng = np.random.default_rng(0)
  mean, std = (0.286,), (0.353,)
  pix = rng.uniform(-0.1, 1.1, (7, 5, 4, 1)).astype(np.float32)  # some clipped at 0 / 1
  images = (pix - mean[0]) / std[0]
  path = logs.save_grid(str(tmp_path / "g.png"), images, mean, std, nrow=3)
  back = logs.read_grid(path, (5, 4, 1), nrow=3, num=7, mean=mean, std=std)
  assert back.shape == images.shape
  np.testing.assert_allclose(back * std[0] + mean[0], np.clip(pix, 0, 1), atol=0.5 / 255 + 1e-6)
  assert logs.read_grid(path, (5, 4, 1), nrow=3).shape == (9, 5, 4, 1)  # every cell (two blank)
  with pytest.raises(ValueError, match="not a grid"):
    logs.read_grid(path, (5, 4, 1), nrow=4)
  with pytest.raises(ValueError, match="padding"):
    logs.read_grid(path, (1, 4, 1), nrow=3)  # 7 rows of 1-pixel images: the size fits by chance
  with pytest.raises(ValueError, match="holds 9 cells"):
    logs.read_grid(path, (5, 4, 1), nrow=3, num=10)
  bad = tmp_path / "bad.png"
  bad.write_bytes(b"\x89PNG not really")
  with pytest.raises(ValueError, match="not a readable PNG"):
    logs.read_grid(str(bad), (5, 4, 1), nrow=3)
