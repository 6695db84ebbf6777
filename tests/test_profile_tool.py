"""``benchmarks.profile`` reads XLA's optimized HLO: its classification and FLOP counts must be right,
or the recorded profiles mislead (no timing is asserted)."""
import jax
import jax.numpy as jnp

from benchmarks import profile


def test_dot_flops_and_categories_from_optimized_hlo():
  f = jax.jit(lambda a, b, c: (jnp.tanh(a @ b).sum(axis=0), jnp.transpose(c)))
  compiled = f.lower(jnp.ones((8, 16)), jnp.ones((16, 4)), jnp.ones((3, 5))).compile()
  instrs, comps = profile.parse_hlo(compiled.as_text())
  entry = [n for n, i in instrs.items() if i["comp"] == list(comps)[-1]]
  cats = {n: profile.classify(n, instrs, comps) for n in entry
          if instrs[n]["op"] not in ("parameter", "tuple", "get-tuple-element", "constant")}
  dots = [c for c in cats.values() if c[0] == "matmul / conv"]
  assert dots and sum(f for _, f in dots) == 2 * 8 * 16 * 4
  assert any(c == ("data movement", 0) for c in cats.values())  # the transpose (or its copy)


def test_convolution_flops():
  x, k = jnp.ones((2, 6, 6, 3)), jnp.ones((3, 3, 3, 5))
  f = jax.jit(lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "VALID",
                                                        dimension_numbers=("NHWC", "HWIO", "NHWC")))
  instrs, comps = profile.parse_hlo(f.lower(x, k).compile().as_text())
  total = sum(profile._op_flops(n, instrs) for n, i in instrs.items() if i["op"] == "convolution")
  assert total == 2 * (2 * 4 * 4 * 5) * (3 * 3 * 3)
