"""Sentio's library: data, features, folds, regimes, training, backtests, registry.

Importing it sets polars' allocator to hand freed memory back at once (:mod:`sentio_core.memory`);
that only takes effect when it comes before polars is first imported.
"""

from sentio_core.memory import configure_allocator

configure_allocator()
