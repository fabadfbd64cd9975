"""unbackdoor: inject, measure and remove backdoors in causal language models, and study how removal transfers.

See README.md for the quick start and docs/ for the run-directory schema.
"""

__version__ = "0.1.0"
