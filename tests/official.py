"""The authors'-implementation vectors, as the conformance package ships them."""
from gtp_ref import GTPViT  # noqa: F401  (tests build models from vector configs)
from gtp_ref.conformance.seeded import model_for, official_vectors


def load():
    return {"vectors": official_vectors()}


__all__ = ["load", "model_for", "GTPViT"]
