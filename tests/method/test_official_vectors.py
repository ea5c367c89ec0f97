"""GTPViT reproduces every vector computed with the authors' implementation (float64)."""

import pytest
import torch

from gtp_ref.conformance.seeded import flat_model
from tests.helpers import model_for, official_vectors

VECTORS = official_vectors()


@pytest.mark.parametrize("vector", VECTORS, ids=[v["id"] for v in VECTORS])
def test_logits_match_the_authors_implementation(vector):
    model, images = model_for(vector)
    with torch.no_grad():
        trace = model.forward_trace(images)
    expected = torch.tensor(vector["logits"], dtype=torch.float64)
    assert trace.tokens_per_layer == vector["tokens_per_layer"], vector["config"]
    assert trace.attn_k_per_layer == vector["attn_k_per_layer"], vector["config"]
    err = (trace.logits - expected).abs().max().item()
    assert torch.allclose(trace.logits, expected, rtol=1e-6, atol=1e-8), (
        f"{vector['id']}: max abs error {err:.3e}, config {vector['config']}"
    )


def test_state_dict_keys_are_timms():
    for vector in VECTORS:
        model = flat_model(vector["config"])
        shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
        assert shapes == vector["state_dict_shapes"], vector["id"]
