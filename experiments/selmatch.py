"""SelMatch end to end on a Fashion-MNIST training subset, beside its baselines, under one protocol.

Usage: python -m experiments.selmatch --config experiments/configs/selmatch_sweep_fmnist.py [--config.x=...]

Steps (every number in the results file comes from this one command):

1. a class-balanced training subset (``per_class`` images per class, chosen by key); the full test set;
2. experts: ``num_experts`` ConvNets trained on the subset with the MTT protocol, every epoch saved
   (``jaxdistill.experts``), recording per-example correctness -> difficulty score of each training
   image = mean over experts of (first-learned epoch + forgetting events / (E + 1)) (higher = harder);
   test-image difficulty = mean EL2N of the final experts (for the easy / hard test accuracies);
3. per subset ratio (IPC = ratio * per_class):
   - random real images;
   - window search: the window of IPC images per class starting ``int(beta * IPC)`` (the reference
     code's unit) or ``int(beta * class size)`` (the paper's, ``search.unit``) places from the hardest,
     beta in 0, 0.1, ..., 0.9, each evaluated by training networks
     on it (cheaper search protocol, stated); the best beta;
   - MTT from random real images, every row distilled;
   - SelMatch: the best window as initialization, the harder ``1 - alpha`` of each class frozen, MTT on the
     whole set; evaluated with combined augmentation (DSA on distilled rows, crop+flip on frozen rows) and,
     for a like-for-like view, with DSA on every row;
   - coverage (feature space of an expert's final network; radius = mean nearest-neighbour distance in
     the training subset) of the MTT and SelMatch sets, overall and on the easy / hard halves;
4. a markdown table in ``c.out`` with the command, config, seeds and date.
"""
from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app
from ml_collections import config_flags

import jaxdistill as jd
from experiments.common import provenance, quiet_logs
from experiments.registry import difficulty_scores

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)


def mtt_distill(c, key, syn0, mask, model, data, traj, workdir, combined=False):
  """MTT (or SelMatch with ``mask``) on ``syn0``; returns the distilled ``SyntheticSet`` and seconds.
  ``combined``: inside the unroll, DSA on the distilled rows and crop+flip on the frozen ones (the
  reference: DSA on every row)."""
  aug = jd.augment.get_augment("dsa", dataset_name=data.name, siamese=False)
  groups = None
  if combined:
    aug = (aug, jd.augment.get_augment("crop_flip", dataset_name=data.name))
    groups = jd.partial.augment_groups(mask)
  obj = jd.objectives.trajectory_matching(model, data.num_classes, c.mtt.syn_steps,
                                          batch_syn=c.mtt.batch_syn or None, augment=aug,
                                          remat=True, groups=groups)
  sampler = jd.objectives.trajectory_sampler(traj, c.mtt.expert_epochs, c.mtt.max_start_epoch)
  tx = jd.distill.optimizer(optax.sgd(c.mtt.lr_img, momentum=0.5),
                            log_lr=optax.sgd(c.mtt.lr_lr, momentum=0.5))
  d = jd.distill.Distiller(obj, tx, sampler, mask=None if mask is None else jnp.asarray(mask),
                           learn_lr=True)
  syn0 = syn0._replace(log_lr=jnp.log(jnp.asarray(c.mtt.lr_teacher, jnp.float32)))
  t = time.time()
  state, _ = jd.distill.run(key, syn0, d, c.mtt.steps, checkpoint_dir=os.path.join(workdir, "ckpt"),
                            checkpoint_every=c.mtt.steps // 2, config=c.to_dict(),
                            logger=jd.logs.MetricLogger(os.path.join(workdir, "logs")))
  return jd.distill.decoded(state, d), time.time() - t


def main(_):
  quiet_logs()
  c = _CONFIG.value
  t_start = time.time()
  key = jax.random.key(c.seed)
  data_key, expert_key, init_key, run_key, eval_key, search_key = jax.random.split(key, 6)
  data = jd.data.load(c.dataset, max_per_class=c.per_class, key=data_key)
  model = jd.models.get_model(c.model, data.num_classes, **c.model_kwargs)
  root = os.path.join(c.workdir, f"selmatch_{data.name}_{c.per_class}pc")
  lines = [f"# SelMatch on a {data.name} subset ({c.per_class} images per class)", "",
           provenance(c)]

  # Experts and difficulty.
  ecfg = jd.experts.ExpertConfig(epochs=c.experts.epochs, lr=c.experts.lr,
                                 batch_size=c.experts.batch_size)
  expert_dir = os.path.join(root, "experts")
  traj = jd.experts.train(expert_key, data, model, expert_dir, c.experts.num, ecfg, progress=False)
  scores = difficulty_scores(expert_dir, traj.experts, traj.num_epochs)
  final = [traj.params_at(i, traj.num_epochs) for i in range(traj.num_experts)]
  apply = lambda p, x: model.apply({"params": p}, x, train=False)
  test_scores = jd.experts.el2n_scores(apply, final, data.x_test, data.y_test)
  easy_t, hard_t = jd.metrics.split_easy_hard(test_scores)
  expert_acc = float(np.mean(np.asarray(jd.evaluate.predict(model, {"params": final[0]},
                                                            jnp.asarray(data.x_test)))
                             == data.y_test))
  print(f"experts: {traj}, expert 0 test acc {100 * expert_acc:.2f}% ({time.time() - t_start:.0f} s)",
        flush=True)
  lines += [f"Experts: {traj.num_experts} x {traj.num_epochs} epochs on the subset (SGD lr "
            f"{ecfg.lr}, batch {ecfg.batch_size}, DSA); expert 0's final test accuracy "
            f"{100 * expert_acc:.2f}%. Training difficulty = mean over experts of first-learned epoch "
            f"+ forgetting events / (E + 1); test difficulty (easy/hard test halves) = mean EL2N of "
            f"the final experts.", ""]
  embed = lambda p, x: model.apply({"params": p}, x, train=False, return_features=True)[1]

  final_cfg = jd.evaluate.EvalConfig(epochs=c.eval_epochs, augment="dsa")
  combined_cfg = final_cfg._replace(augment=("dsa", "crop_flip"))
  test_groups = {"easy": easy_t, "hard": hard_t}

  def ev(syn, cfg=final_cfg, groups=None):
    return jd.evaluate.accuracy(eval_key, syn, data, model=c.eval_model,
                                model_kwargs=dict(c.eval_model_kwargs), num_seeds=c.num_seeds,
                                cfg=cfg, groups=groups, test_groups=test_groups)

  def cell(r):
    g = r.group_accuracies
    return (f"{100 * r.mean:.2f} ± {100 * r.std:.2f} | {100 * g['easy'].mean():.2f} | "
            f"{100 * g['hard'].mean():.2f}")

  def cov(syn):
    rep = jd.metrics.coverage_report(embed, final[0], np.asarray(syn.images), data.x_train,
                                     scores=scores)
    return f"{100 * rep['coverage']:.1f} / {100 * rep['easy']:.1f} / {100 * rep['hard']:.1f}"

  rows = ["| ratio (IPC) | set | test acc (%) | easy half | hard half | coverage all / easy / hard "
          "(%) |", "|---|---|---|---|---|---|"]
  search_lines = []
  for ratio, alpha in zip(c.ratios, c.alphas):
    ipc = int(round(ratio * c.per_class))
    tag = f"{100 * ratio:g}% ({ipc})"
    rnd = jd.selection.random(jax.random.fold_in(init_key, ipc), data.x_train, data.y_train,
                              data.num_classes, ipc)
    r = ev(rnd)
    rows.append(f"| {tag} | random real | {cell(r)} | {cov(rnd)} |")
    print(f"[{tag}] random: {r}", flush=True)

    search_cfg = jd.evaluate.EvalConfig(epochs=c.search.eval_epochs, augment="dsa")
    best_beta, results = jd.selection.window_search(
        search_key, scores, data, ipc, betas=tuple(c.search.betas), unit=c.search.unit,
        model=c.eval_model,
        model_kwargs=dict(c.eval_model_kwargs), num_seeds=c.search.num_seeds, cfg=search_cfg)
    search_lines.append(f"| {tag} | " + " | ".join(
        f"{100 * results[b].mean:.1f}" if b in results else "-" for b in c.search.betas)
        + f" | {best_beta:g} |")
    print(f"[{tag}] window search: best beta {best_beta} "
          f"{ {b: round(100 * v.mean, 1) for b, v in results.items()} }", flush=True)
    win = jd.selection.window_init(scores, data.x_train, data.y_train, data.num_classes, ipc,
                                   best_beta, unit=c.search.unit)
    r = ev(win)
    rows.append(f"| {tag} | best window (beta {best_beta:g}) | {cell(r)} | {cov(win)} |")

    mtt, mtt_s = mtt_distill(c, jax.random.fold_in(run_key, ipc), rnd, None, model, data, traj,
                             os.path.join(root, f"mtt_ipc{ipc}"))
    r = ev(mtt)
    rows.append(f"| {tag} | MTT (random real init, all rows) | {cell(r)} | {cov(mtt)} |")
    print(f"[{tag}] MTT: {r} ({mtt_s:.0f} s)", flush=True)

    mask = jd.partial.selmatch_mask(np.asarray(win.labels), data.num_classes, alpha)
    sel, sel_s = mtt_distill(c, jax.random.fold_in(run_key, ipc), win, mask, model, data, traj,
                             os.path.join(root, f"selmatch_ipc{ipc}"))
    frozen_same = bool(np.array_equal(np.asarray(sel.images)[~mask], np.asarray(win.images)[~mask]))

    def report(label, syn, secs):
      """Evaluates a SelMatch set with combined augmentation and with DSA on every row; adds rows."""
      r_comb = ev(syn, combined_cfg, groups=jd.partial.augment_groups(mask))
      r_dsa = ev(syn)
      rows.append(f"| {tag} | {label}, combined aug | {cell(r_comb)} | {cov(syn)} |")
      rows.append(f"| {tag} | {label}, DSA on every row | {cell(r_dsa)} | (same set) |")
      print(f"[{tag}] {label}: combined {r_comb}, DSA {r_dsa} ({secs:.0f} s)", flush=True)

    report(f"SelMatch (alpha {alpha:g}, beta {best_beta:g})", sel, sel_s)
    print(f"[{tag}] SelMatch frozen rows unchanged: {frozen_same}", flush=True)
    if c.get("compare_distill_augment", False):
      sel_c, selc_s = mtt_distill(c, jax.random.fold_in(run_key, ipc), win, mask, model, data, traj,
                                  os.path.join(root, f"selmatch_ipc{ipc}_combined_distill"),
                                  combined=True)
      report("SelMatch, combined aug also inside the unroll", sel_c, selc_s)
    for name, syn in (("mtt", mtt), ("selmatch", sel)):
      jd.logs.save_grid(os.path.join(os.path.dirname(c.out), f"{name}_{data.name}_ipc{ipc}.png"),
                        np.asarray(syn.images), data.mean, data.std, nrow=ipc)
    lines.append(f"- IPC {ipc}: MTT {mtt_s:.0f} s, SelMatch {sel_s:.0f} s of distillation; "
                 f"SelMatch's frozen rows bit-identical to the window after distillation: "
                 f"{frozen_same}.")

  lines += ["", f"Evaluation: {c.eval_model} {dict(c.eval_model_kwargs)}, {c.eval_epochs} epochs, "
            f"SGD lr 0.01 (the learned step size for MTT/SelMatch sets) momentum 0.9 wd 5e-4, "
            f"x0.1 at half, batch 256, {c.num_seeds} seeds; DSA unless stated. Easy / hard halves: "
            f"test images split at the median expert EL2N. Coverage: of the {len(data.y_train)} "
            f"training-subset images, in expert 0's feature space, halves by training difficulty.",
            "", *rows, "", f"Window search ({c.search.eval_epochs} epochs DSA, {c.search.num_seeds} "
            f"seeds; test accuracy % by beta; unit {c.search.unit!r}: the window starts "
            f"{'int(beta * IPC)' if c.search.unit == 'code' else 'int(beta * class size)'} places from "
            f"the hardest image of each class):", "",
            "| ratio (IPC) | " + " | ".join(f"{b:g}" for b in c.search.betas) + " | best |",
            "|---|" + "---|" * (len(c.search.betas) + 1), *search_lines, "",
            f"Total run time: {time.time() - t_start:.0f} s.", ""]
  with open(c.out, "w") as f:
    f.write("\n".join(lines))
  print("\n".join(rows))
  print(f"wrote {c.out}")


if __name__ == "__main__":
  app.run(main)
