"""SelMatch across subset ratios on a Fashion-MNIST training subset, beside its baselines, one protocol.

Usage: python -m experiments.selmatch --config experiments/configs/selmatch_sweep_fmnist.py [--config.x=...]
(the plot needs the ``plot`` extra: ``pip install -e ".[plot]"``)

Steps (every number in the results file comes from this one command):

1. a class-balanced draw of ``per_class + holdout_per_class`` training images per class (chosen by key):
   ``per_class`` of each class form the training subset (what the sets are selected from and distilled
   on, what experts train on, the 100% of the ratios), the other ``holdout_per_class`` a held-out split
   that chooses the window; the full test set scores everything;
2. experts: ``experts.num`` ConvNets trained on the subset with the MTT protocol, every epoch saved
   (``jaxdistill.experts``), recording per-example correctness -> difficulty score of each training
   image = mean over experts of (first-learned epoch + forgetting events / (E + 1)) (higher = harder);
   test-image difficulty = mean EL2N of the final experts (for the easy / hard test accuracies);
3. per subset ratio (IPC = ratio * per_class):
   - random real images;
   - window search: the window of IPC images per class starting ``int(beta * IPC)`` (the reference
     code's unit) or ``int(beta * class size)`` (the paper's, ``search.unit``) places from the hardest,
     each evaluated by training networks on it; every network is scored on the held-out split and on the
     test set, so one search gives the window chosen on held-out data (used for SelMatch) and the one the
     test set would choose (the paper's procedure, reported beside for comparison);
   - MTT from random real images, every row distilled;
   - SelMatch for each alpha of the ratio: the held-out-chosen window as initialization, the harder
     ``1 - alpha`` of each class frozen, MTT on the whole set; evaluated with combined augmentation (DSA
     on distilled rows, crop+flip on frozen rows) and with DSA on every row;
   - coverage (feature space of an expert's final network; radius = mean nearest-neighbour distance in
     the training subset) of every set, overall and on the easy / hard halves of the subset;
4. a markdown table in ``c.out`` (rewritten after every ratio, so a stopped run shows what it finished)
   with the command, config, seeds and date, and a plot of accuracy vs ratio beside it.

Resumable: experts and distillations checkpoint (MTT every ``mtt.checkpoint_every`` iterations) and every
evaluation and coverage is cached by the content of the set it scored, under ``workdir``; the same
command continues where a stopped one ended. A larger ``mtt.steps`` extends finished distillations.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxdistill as jd
from experiments import registry
from experiments.common import (cached_results, decode_result, encode_result, errorbar_plot,
                                hand_notes, ident, json_cache, provenance, require_plot, run_script)
from experiments.configs.common import base, trajectory


def split_holdout(data, per_class: int):
  """``(subset, holdout_x, holdout_y)``: the first ``per_class`` images of each class of ``data``'s
  training split (file order) as the training subset, the rest of each class held out."""
  per = jd.data.class_indices(data.y_train, data.num_classes)
  keep = np.sort(np.concatenate([idx[:per_class] for idx in per]))
  held = np.sort(np.concatenate([idx[per_class:] for idx in per]))
  if held.size == 0:
    raise ValueError("holdout_per_class must be >= 1: the window is chosen on held-out images.")
  sub = dataclasses.replace(data, x_train=data.x_train[keep], y_train=data.y_train[keep])
  return sub, data.x_train[held], data.y_train[held]


def check_config(c, num_classes: int) -> None:
  """Refuses, before hours of work, a config whose later stages cannot run: alphas for every ratio in
  [0, 1], whole IPCs, and an MTT ``batch_syn`` that divides every ratio's synthetic rows."""
  if len(c.alphas) != len(c.ratios):
    raise ValueError(f"alphas needs one tuple per ratio: {len(c.ratios)} ratios, {len(c.alphas)} tuples.")
  for ratio, alphas in zip(c.ratios, c.alphas):
    ipc = ratio * c.per_class
    if abs(ipc - round(ipc)) > 1e-9 or round(ipc) < 1:
      raise ValueError(f"ratio {ratio} of {c.per_class} images per class is not a whole IPC >= 1.")
    rows = int(round(ipc)) * num_classes
    if c.mtt.batch_syn and rows % c.mtt.batch_syn:
      raise ValueError(f"mtt.batch_syn={c.mtt.batch_syn} does not divide the {rows} synthetic rows of "
                       f"ratio {ratio}; choose a common divisor of every ratio's rows, or 0 (all rows).")
    if not alphas or not all(0.0 <= a <= 1.0 for a in alphas):
      raise ValueError(f"alphas of ratio {ratio} must be non-empty and in [0, 1]; got {alphas}.")


DIFFICULTY_TEXT = {"first_learned": "first-learned epoch + forgetting events / (E + 1), an image "
                                    "never classified correctly counting E events",
                   "forgetting": "forgetting events, never-learned images ranked hardest (Toneva et al.)"}


def eval_rule(c, ratio: float) -> tuple:
  """``(EvalConfig, use_learned_lr)`` every set of a ratio is evaluated with: the reference schedule
  with ``c.eval_epochs`` (MTT / SelMatch sets with their learned step size), or with
  ``c.eval_protocol="selmatch"`` SelMatch's rule for the ratio, the same for every set. Its
  ``test_batch_size`` only sets how many test images are predicted at once; 2000 keeps the cache keys
  of evaluations stored before the default became 256."""
  if c.get("eval_protocol"):
    p = jd.evaluate.protocol(c.eval_protocol, c.dataset, ratio=ratio)
    return p.cfg._replace(test_batch_size=2000), p.use_learned_lr
  return jd.evaluate.EvalConfig(epochs=c.eval_epochs, augment="dsa", test_batch_size=2000), True


def _digest(syn) -> str:
  lr = None if syn.log_lr is None else float(np.asarray(syn.log_lr))
  return ident(np.asarray(syn.images).tobytes(), np.asarray(syn.labels).tobytes(), lr)


def mtt_config(c):
  """The sweep's MTT settings (``c.mtt``) as a distillation config of method ``"mtt"``: every
  distillation here is built from the registry's trajectory-matching parts of this config (objective
  with DSA on every row, segment sampler, optimizer, initial step size), as ``experiments.distill``'s
  MTT runs are."""
  m = c.mtt
  mc = base("mtt", ipc=1)
  mc.dataset, mc.model, mc.model_kwargs = c.dataset, c.model, c.model_kwargs.to_dict()
  return trajectory(mc, m.syn_steps, m.expert_epochs, m.max_start_epoch, m.lr_img, m.lr_lr,
                    lr_teacher=m.lr_teacher, batch_syn=m.batch_syn)


def mtt_distill(c, key, syn0, mask, model, data, traj, workdir):
  """MTT (or SelMatch with ``mask``) on ``syn0``, DSA on every row as in the reference; returns the
  distilled ``SyntheticSet`` (its log, with time stamps, in ``workdir/logs``)."""
  mc = mtt_config(c)
  obj, sampler = registry.trajectory_parts(mc, data, model, traj)
  # The step size is learned in the reference's parameterization (lr itself, SGD momentum 0.5).
  d = jd.distill.Distiller(obj, registry.optimizer(mc, log_lr=True), sampler,
                           mask=None if mask is None else jnp.asarray(mask))
  syn0 = registry.with_step_size(mc, syn0)
  # The identity checked on resume: everything but the number of steps, so a run can be extended.
  identity = {k: v for k, v in c.mtt.to_dict().items() if k not in ("steps", "checkpoint_every")}
  identity.update(model=c.model, model_kwargs=c.model_kwargs.to_dict(), per_class=c.per_class,
                  holdout_per_class=c.holdout_per_class, seed=c.seed)
  if mask is not None:  # SelMatch starts from a window chosen by the study's settings: name it
    identity["initial_set"] = _digest(syn0)
  state, _ = jd.distill.run(key, syn0, d, c.mtt.steps, checkpoint_dir=os.path.join(workdir, "ckpt"),
                            checkpoint_every=c.mtt.checkpoint_every, config=identity,
                            logger=jd.logs.MetricLogger(os.path.join(workdir, "logs")))
  return jd.distill.decoded(state, d)


def run_summary(workdir: str, steps: int) -> str:
  """A distillation run from its log: seconds per iteration, and its loss averaged over the logged
  steps of each sixth of the run (the record of whether it had levelled off)."""
  rows = [r for r in jd.logs.read_metrics(os.path.join(workdir, "logs")) if int(r["step"]) <= steps]
  block = max(1, -(-steps // 6))  # six blocks at most; the last may be shorter
  trend = ", ".join(f"{s}-{min(s + block - 1, steps)}: {m:.3f}"
                    for s, m in jd.logs.block_means(rows, "loss", block))
  sps = jd.logs.seconds_per_step(rows)
  speed = "not measured" if sps is None else f"{sps:.2g} s"
  return f"{steps} iterations, {speed} each (median over logged intervals); loss by steps {trend}"


def plot(path: str, curves: dict, ratios, title: str) -> None:
  """Accuracy (mean ± std over seeds) against subset ratio, one line per method."""
  lines = {name: ([100 * r for r in ratios if r in pts], [100 * pts[r][0] for r in ratios if r in pts],
                  [100 * pts[r][1] for r in ratios if r in pts])
           for name, pts in curves.items() if any(r in pts for r in ratios)}
  errorbar_plot(path, lines, "subset ratio (%)", title)


def run(c) -> dict:
  """The whole study of config ``c`` (the command's work); returns ``{"rows": the results table's
  rows, "text": the results file}``. ``c.plot`` False: no plot (no matplotlib needed)."""
  if c.get("plot", True):
    require_plot("experiments.selmatch")
  t_start = time.time()
  key = jax.random.key(c.seed)
  data_key, expert_key, init_key, run_key, eval_key, search_key = jax.random.split(key, 6)
  full = jd.data.load(c.dataset, max_per_class=c.per_class + c.holdout_per_class, key=data_key)
  data, x_hold, y_hold = split_holdout(full, c.per_class)
  check_config(c, data.num_classes)
  model = jd.models.get_model(c.model, data.num_classes, **c.model_kwargs)
  root = os.path.join(c.workdir, f"selmatch_{data.name}_{c.per_class}pc")
  head = [f"# SelMatch across subset ratios on a {data.name} subset ({c.per_class} images per class)",
          "", provenance(c)]

  # Experts and difficulty.
  ecfg = jd.experts.ExpertConfig(epochs=c.experts.epochs, lr=c.experts.lr,
                                 batch_size=c.experts.batch_size)
  expert_dir = os.path.join(root, "experts")
  traj = jd.experts.train(expert_key, data, model, expert_dir, c.experts.num, ecfg, progress=False)
  scores = registry.difficulty_scores(expert_dir, traj.experts, traj.num_epochs,
                                      c.get("difficulty", "first_learned"))
  final = [traj.params_at(i, traj.num_epochs) for i in range(traj.num_experts)]
  apply = lambda p, x: model.apply({"params": p}, x, train=False)
  test_scores = jd.experts.el2n_scores(apply, final, data.x_test, data.y_test)
  easy_t, hard_t = jd.metrics.split_easy_hard(test_scores)
  expert_accs = [float(np.mean(np.asarray(jd.evaluate.predict(model, {"params": p},
                                                              jnp.asarray(data.x_test)))
                               == data.y_test)) for p in final]
  expert_acc = expert_accs[0]
  print(f"experts: {traj}, expert 0 test acc {100 * expert_acc:.2f}% ({time.time() - t_start:.0f} s)",
        flush=True)
  head += [f"Experts: {traj.num_experts} x {traj.num_epochs} epochs on the subset (SGD lr "
           f"{ecfg.lr}, batch {ecfg.batch_size}, DSA); expert 0's final test accuracy "
           f"{100 * expert_acc:.2f}%. Training difficulty = mean over experts of "
           f"{DIFFICULTY_TEXT[c.get('difficulty', 'first_learned')]}; test difficulty (easy/hard "
           f"test halves) = mean EL2N of "
           f"the final experts.", ""]
  coverage = registry.coverage(mtt_config(c), data, model, traj, scores)  # all images, expert 0

  # Window-search networks are scored on the held-out split and the test set in one pass.
  n_hold = len(y_hold)
  search_data = dataclasses.replace(data, x_test=np.concatenate([x_hold, data.x_test]),
                              y_test=np.concatenate([y_hold, data.y_test]))
  in_hold = np.arange(len(search_data.y_test)) < n_hold
  search_groups = {"holdout": in_hold, "test": ~in_hold}
  test_groups = {"easy": easy_t, "hard": hard_t}
  cache = os.path.join(root, "cache")
  grids = os.path.splitext(c.out)[0]  # image grids beside the results file, named after it

  def ev(syn, cfg, learned, groups=None, search=False, seeds=None):
    """Evaluation of ``syn`` (cached by its content and the protocol); ``learned``: train with the
    set's learned step size where it has one."""
    seeds = seeds or c.num_seeds
    parts = (_digest(syn), cfg, None if groups is None else np.asarray(groups).tobytes(), search, seeds,
             c.eval_model, c.eval_model_kwargs.to_dict()) + (() if learned else ("no learned lr",))
    if not search:  # the easy / hard columns come from the experts' EL2N of the test images
      parts += (ident(np.asarray(easy_t).tobytes()),)
    return decode_result(json_cache(os.path.join(cache, f"eval_{ident(*parts)}.json"),
                                    lambda: encode_result(jd.evaluate.accuracy(
        eval_key if not search else search_key, syn, search_data if search else data,
        model=c.eval_model, model_kwargs=dict(c.eval_model_kwargs), num_seeds=seeds, cfg=cfg,
        groups=groups, test_groups=search_groups if search else test_groups,
        use_learned_lr=learned, cache_dir=os.path.join(cache, "networks")))))

  # Coverage is measured in expert 0's final feature space, its halves by the difficulty scores.
  cov_space = ident(np.asarray(scores).tobytes(),
                    *[np.asarray(x).tobytes() for x in jax.tree.leaves(final[0])])

  def cov(syn):
    rep = cached_results(os.path.join(cache, f"coverage_{ident(_digest(syn), cov_space)}.json"),
                         lambda: coverage(None, syn))
    return " / ".join(f"{100 * rep[f'coverage ({part})']:.1f}" for part in ("all", "easy half",
                                                                           "hard half"))

  def cell(r):
    g = r.group_accuracies
    return (f"{100 * r.mean:.2f} ± {100 * r.std:.2f} | {100 * g['easy'].mean():.2f} | "
            f"{100 * g['hard'].mean():.2f}")

  rows = ["| ratio (IPC) | set | test acc (%) | easy half | hard half | coverage all / easy / hard "
          "(%) |", "|---|---|---|---|---|---|"]
  search_lines, run_lines = [], []
  curves = {}

  record = {"expert_test_acc": [100 * a for a in expert_accs], "eval_learned_lr": None, "rows": []}

  def point(name, ratio, r):
    curves.setdefault(name, {})[ratio] = (r.mean, r.std)

  def note(kind, ratio, r, learned, alpha=None, beta=None, evaluator="dsa"):
    """One row of the JSON record: ``set`` in random / window / mtt / selmatch, accuracies in %."""
    record["eval_learned_lr"] = bool(learned and kind in ("mtt", "selmatch")) or \
        bool(record["eval_learned_lr"])
    record["rows"].append({"set": kind, "ratio": ratio, "alpha": alpha, "beta": beta,
                           "evaluator": f"{c.eval_model}, {evaluator}"
                                        + (f", protocol {c.eval_protocol}" if c.get("eval_protocol")
                                           else ""),
                           "mean": 100 * r.mean, "std": 100 * r.std})

  def write(done: bool):
    tail = ([f"Total run time of the last session: {time.time() - t_start:.0f} s.", ""] if done else
            ["(run in progress: ratios after the last row are still to come)", ""])
    search_head = " | ".join(f"{b:g}" for b in c.search.betas)
    rule = (f"{c.eval_epochs} epochs, the reference schedule (SGD lr 0.01, or the learned step size "
            f"for MTT/SelMatch sets, momentum 0.9, wd 5e-4, lr / 10 after half with momentum "
            f"restarted, batch 256)" if not c.get("eval_protocol") else
            f"SelMatch's training rule for every set alike (jaxdistill.evaluate.protocol("
            f"{c.eval_protocol!r}): SGD lr 0.1 momentum 0.9, wd 5e-4, batch 128, cosine to lr / 100 "
            f"per epoch, round(50 / ratio) + 1 epochs, no learned step size for any set)")
    text = head + [
        f"Evaluation: {c.eval_model} {dict(c.eval_model_kwargs)}, {rule}, {c.num_seeds} seeds; "
        f"DSA unless stated. Easy / hard halves: test images split at the median expert EL2N. Coverage: "
        f"of the {len(data.y_train)} training-subset images, in expert 0's feature space, halves by "
        f"training difficulty.", "", *rows, "",
        f"Window search ({c.search.eval_epochs} epochs DSA, {c.search.num_seeds} seeds; accuracy % on "
        f"the held-out split ({n_hold} training images outside the subset) / on the test set, by beta; "
        f"unit {c.search.unit!r}: the window starts "
        f"{'int(beta * IPC)' if c.search.unit == 'code' else 'int(beta * class size)'} places from the "
        f"hardest image of each class; '-': the window runs past the class):", "",
        f"| ratio (IPC) | {search_head} | best on held-out | best on test |",
        "|---|" + "---|" * (len(c.search.betas) + 2), *search_lines, "", *run_lines, "", *tail,
        *hand_notes(c.out)]
    with open(c.out, "w") as f:
      f.write("\n".join(text))
    with open(os.path.splitext(c.out)[0] + ".json", "w") as f:
      json.dump(record, f, indent=1)
    if curves and c.get("plot", True):
      plot(os.path.splitext(c.out)[0] + ".png", curves, c.ratios,
           f"{data.name}, {c.per_class} images per class, ConvNet evaluation")

  for ratio, alphas in zip(c.ratios, c.alphas):
    ipc = int(round(ratio * c.per_class))
    tag = f"{100 * ratio:g}% ({ipc})"
    final_cfg, learned = eval_rule(c, ratio)
    combined_cfg = final_cfg._replace(augment=jd.partial_updates.combined_augment())
    search_cfg = final_cfg._replace(epochs=c.search.eval_epochs)
    rnd = jd.selection.random(jax.random.fold_in(init_key, ipc), data.x_train, data.y_train,
                              data.num_classes, ipc)
    r = ev(rnd, final_cfg, learned)
    rows.append(f"| {tag} | random real | {cell(r)} | {cov(rnd)} |")
    point("random real", ratio, r)
    note("random", ratio, r, learned)
    print(f"[{tag}] random: {r}", flush=True)

    _, results = jd.selection.window_search(
        search_key, scores, data, ipc, betas=tuple(c.search.betas), unit=c.search.unit,
        evaluate_fn=lambda k, syn: ev(syn, search_cfg, learned, search=True,
                                      seeds=c.search.num_seeds))
    acc = {split: {b: float(r.group_accuracies[split].mean()) for b, r in results.items()}
           for split in ("holdout", "test")}
    best = {split: max(acc[split], key=acc[split].get) for split in acc}  # first on a tie
    search_lines.append(f"| {tag} | " + " | ".join(
        f"{100 * acc['holdout'][b]:.1f} / {100 * acc['test'][b]:.1f}" if b in results else "-"
        for b in c.search.betas) + f" | {best['holdout']:g} | {best['test']:g} |")
    print(f"[{tag}] window search: best beta on held-out {best['holdout']}, on test {best['test']}",
          flush=True)
    wins, win_acc = {}, {}
    for split in ("holdout", "test"):
      b = best[split]
      if b not in wins:
        wins[b] = jd.selection.window_init(scores, data.x_train, data.y_train, data.num_classes, ipc,
                                           b, unit=c.search.unit)
        win_acc[b] = ev(wins[b], final_cfg, learned)
        chosen = " and ".join(s.replace("holdout", "held-out") for s in ("holdout", "test")
                              if best[s] == b)
        both = (f"beta {b:g}; code unit {b * c.per_class / ipc:.3g}" if c.search.unit == "percent"
                else f"beta {b:g}; percent unit {b * ipc / c.per_class:.3g}")
        rows.append(f"| {tag} | best window on {chosen} ({both}) | {cell(win_acc[b])} | "
                    f"{cov(wins[b])} |")
        note("window", ratio, win_acc[b], learned, beta=b,
             evaluator=f"dsa, beta chosen on {chosen}")
      point(f"best window (chosen on {split.replace('holdout', 'held-out')})", ratio, win_acc[b])
    win = wins[best["holdout"]]

    mtt_dir = os.path.join(root, f"mtt_ipc{ipc}")
    mtt = mtt_distill(c, jax.random.fold_in(run_key, ipc), rnd, None, model, data, traj, mtt_dir)
    r = ev(mtt, final_cfg, learned)
    rows.append(f"| {tag} | MTT (random real init, all rows) | {cell(r)} | {cov(mtt)} |")
    point("MTT", ratio, r)
    note("mtt", ratio, r, learned)
    print(f"[{tag}] MTT: {r}", flush=True)
    run_lines.append(f"- IPC {ipc}: MTT, learned step size "
                     f"{float(np.exp(np.asarray(mtt.log_lr))):.4g} (init {c.mtt.lr_teacher:g}); "
                     f"{run_summary(mtt_dir, c.mtt.steps)}.")

    for i, alpha in enumerate(alphas):
      mask = jd.partial_updates.selmatch_mask(np.asarray(win.labels), data.num_classes, alpha)
      sel_dir = os.path.join(root, f"selmatch_ipc{ipc}_alpha{alpha:g}_beta{best['holdout']:g}")
      sel = mtt_distill(c, jax.random.fold_in(run_key, ipc), win, mask, model, data, traj, sel_dir)
      frozen_same = bool(np.array_equal(np.asarray(sel.images)[~mask],
                                        np.asarray(win.images)[~mask]))
      label = f"SelMatch (alpha {alpha:g}, beta {best['holdout']:g})"
      r_comb = ev(sel, combined_cfg, learned, groups=jd.partial_updates.augment_groups(mask))
      r_dsa = ev(sel, final_cfg, learned)
      rows.append(f"| {tag} | {label}, combined aug | {cell(r_comb)} | {cov(sel)} |")
      rows.append(f"| {tag} | {label}, DSA on every row | {cell(r_dsa)} | (same set) |")
      note("selmatch", ratio, r_comb, learned, alpha, best["holdout"], "combined aug")
      note("selmatch", ratio, r_dsa, learned, alpha, best["holdout"], "dsa")
      # One line through each ratio's first alpha (the paper's), separate points for the others.
      point(f"SelMatch, alpha {'/'.join(f'{a[0]:g}' for a in c.alphas)} (combined aug)"
            if i == 0 else f"SelMatch, alpha {alpha:g} (combined aug)", ratio, r_comb)
      print(f"[{tag}] {label}: combined {r_comb}, DSA {r_dsa}", flush=True)
      run_lines.append(f"- IPC {ipc}, alpha {alpha:g}: SelMatch, learned step size "
                       f"{float(np.exp(np.asarray(sel.log_lr))):.4g}; frozen rows bit-identical to "
                       f"the window after distillation: {frozen_same}; "
                       f"{run_summary(sel_dir, c.mtt.steps)}.")
      jd.logs.save_grid(f"{grids}_selmatch_ipc{ipc}_alpha{alpha:g}.png",
                        jd.data.denormalize(sel.images, data), nrow=ipc)
    jd.logs.save_grid(f"{grids}_mtt_ipc{ipc}.png", jd.data.denormalize(mtt.images, data), nrow=ipc)
    write(done=False)
  write(done=True)
  print("\n".join(rows))
  print(f"wrote {c.out}")
  with open(c.out) as f:
    return {"rows": rows, "text": f.read()}


if __name__ == "__main__":
  run_script(run)
