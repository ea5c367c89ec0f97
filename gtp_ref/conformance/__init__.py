"""The GTP conformance suite: run it against your own implementation of the op-level API.

    GTP_IMPL=my_package.gtp python -m pytest --pyargs gtp_ref.conformance

``GTP_IMPL`` names a module exposing ``token_graph``, ``to_dense``, ``sparsify_attention``,
``token_scores``, ``select_tokens`` and ``propagate`` (unset: ``gtp_ref.backends.sparse``).  The dense
reference ``gtp_ref.backends.dense`` is the oracle.  ``python -m gtp_ref.conformance export DIR`` writes
language-neutral JSON vectors.  See docs/conformance.md.
"""
