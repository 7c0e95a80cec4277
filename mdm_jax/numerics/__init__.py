"""Cross-backend numerics: what a CPU, GPU or TPU does to this package's arithmetic.

    python -m mdm_jax.numerics report --out report.json [--size quick] [--scale 6]
    python -m mdm_jax.numerics compare a.json b.json [...] [--out table.md] [--differences]

A report holds, as named rows with tolerances (`rows`):
  env/...      backend, device kind and count, jax/jaxlib, x64, the default matmul precision
  matmul/...   what each `jax.default_matmul_precision` setting actually does here (measured:
               XLA:CPU ignores them all), and that the emulated accelerator arithmetic is exact
  cap/, tail/, tokens/   the categorical draws under every sampling policy (`draws`)
  model/...    the networks' own arithmetic against a float64 reference (`arithmetic`,
               `networks`): logit error, top-1 agreement, and what it does to samples
Set the environment to compare: JAX_ENABLE_X64=1, JAX_DEFAULT_MATMUL_PRECISION=highest, ...
Notebook 05 (notebooks/05_backends.ipynb) plots the reports committed under docs/numerics/.
"""

from mdm_jax.numerics.compare import compare_reports, format_table
from mdm_jax.numerics.report import make_report, save
from mdm_jax.numerics.rows import ReportError, load

__all__ = ["make_report", "save", "load", "compare_reports", "format_table", "ReportError"]
