"""One module per distillation method, found by name: ``experiments/methods/<name>.py`` is method
``<name>`` (``--config.method=<name>``); a module elsewhere is used by its import path
(``--config.method=my_pkg.my_method``).

A method module defines:

- ``build(c, data) -> experiments.registry.Method``: the run's objective, optimizer, sampler, initial
  set, row mask, parameterization and evaluators, from the config ``c`` (use
  ``registry.evaluators(c, data, ...)`` for ``c.evals``, passing the method's own evaluators);
- ``DISTILL_FIELDS`` (optional): config fields only its distillation reads, so that runs differing
  in them share the random-real baseline's cached evaluation (any other field is part of the
  baseline's identity);
- ``BASELINE_FIELDS`` (optional): ``{evaluator: ("dotted.field", ...)}``, fields of ``DISTILL_FIELDS``
  that an evaluator's random-real baseline does read (SelMatch's coverage halves follow
  ``selmatch.difficulty``);
- ``UNUSED_FIELDS`` (optional): shared config fields it never reads (KIP's and FRePo's ``model``): left
  out of the run's identity and its header, so they neither block a resume nor describe the run;
- ``smoke(c) -> {"dotted.field": value}`` (optional): overrides that make the smallest run still
  going through every piece the method has (used by the tests).
"""
