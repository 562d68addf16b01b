"""The `make demo` job, shrunk: it trains, certifies, saves and reloads."""

import torch

import idlkit
from idlkit.demo import run_demo


def test_demo_trains_and_saves(tmp_path):
    res = run_demo(out=tmp_path / "m.safetensors", hidden=24, epochs=2, log=False)
    assert res.test_accuracy > 0.5  # 10 classes: chance is 0.1
    model = idlkit.load(res.path)
    assert isinstance(model, idlkit.ImplicitModel)
    assert model.certificate().holds["inf"]
    assert res.mean_forward_iterations >= 1 and res.mean_backward_iterations >= 1
    u = torch.randn(3, 64)
    torch.testing.assert_close(model(u), idlkit.load(res.path)(u), rtol=0, atol=0)
