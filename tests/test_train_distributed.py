"""Data-parallel training (Trainer under torch.distributed, gloo, 2 CPU processes): the steps,
the gradients and the projected weights equal single-process training (issue 20)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import idlkit as idl
from idlkit.errors import ConfigurationError
from idlkit.train import Trainer

if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
    pytest.skip("torch.distributed with the gloo backend is not available", allow_module_level=True)

WORKER = textwrap.dedent('''
    import sys, torch, torch.distributed as dist
    sys.path[:0] = [sys.argv[5]]
    import idlkit as idl
    from idlkit.train import Trainer
    rank, world, store, out, _ = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    import setup_case
    for i in range(len(setup_case.CASES)):  # every case in one process group: one start-up for all
        X, y, model, settings = setup_case.case(i)
        if rank:  # DDP must broadcast rank 0's weights: start the others elsewhere
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.5)
        res = Trainer(distributed=True, **settings).fit(model, (X, y))
        torch.save({"state": model.state_dict(), "loss": [r.train_loss for r in res.history]},
                   f"{out}/rank{rank}_case{i}.pt")
    dist.destroy_process_group()
''')

CASE = textwrap.dedent('''
    import torch, idlkit as idl

    CASES = []

    def case(i):
        g = torch.Generator().manual_seed(0)
        X = torch.randn(201, 6, generator=g, dtype=torch.float64)  # the last batch holds 1 sample
        y = ((X[:, 0] + X[:, 1] > 0).long() + (X[:, 2] > 1).long())
        torch.manual_seed(0)
        model = idl.ImplicitModel(6, 12, 3, kappa=0.6, tol=1e-12, dtype=torch.float64)
        settings = dict(optimizer="sgd", lr=0.5, epochs=3, batch_size=50, seed=1,
                        penalties=[("l1", 1e-3)], project=True)
        settings.update(CASES[i])
        return X, y, model, settings
''')


# the option sets of the tests below, run by the same two worker processes (the start-up of a
# process group costs more than the training)
PROJECTED, ONE_STEP = {}, {"batch_size": 201, "epochs": 1, "project": False}


def _case(folder: Path, i: int) -> tuple:
    """Case ``i`` written in ``folder`` (the same code the workers run), loaded here."""
    spec = importlib.util.spec_from_file_location("setup_case", folder / "setup_case.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.case(i)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[list[dict], dict]]]:
    """Each case of ``CASES`` trained on 2 processes and by the single-process reference:
    [(ranks, single)] in the order of CASES, and the folder holding the case file."""
    tmp_path = tmp_path_factory.mktemp("distributed")
    cases = [PROJECTED, ONE_STEP]
    src = str(Path(idl.__file__).resolve().parent.parent)
    (tmp_path / "setup_case.py").write_text(CASE.replace("CASES = []", f"CASES = {cases!r}"))
    (tmp_path / "worker.py").write_text(WORKER)
    env = {"PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    store = tmp_path / "store"
    procs = [subprocess.Popen([sys.executable, str(tmp_path / "worker.py"), str(r), "2", str(store),
                               str(tmp_path), src], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for r in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-3000:]
    out = []
    for i in range(len(cases)):
        ranks = [torch.load(tmp_path / f"rank{r}_case{i}.pt") for r in range(2)]
        X, y, model, settings = _case(tmp_path, i)
        res = Trainer(**settings).fit(model, (X, y))
        out.append((ranks, {"state": model.state_dict(), "loss": [r.train_loss for r in res.history]}))
    return tmp_path, out


def test_projected_weights_equal_single_process_training(runs) -> None:
    _, results = runs
    ranks, single = results[0]
    for k, v in single["state"].items():  # every rank holds the same weights, bit for bit
        assert torch.equal(ranks[0]["state"][k], ranks[1]["state"][k]), k
        torch.testing.assert_close(ranks[0]["state"][k], v, atol=1e-10, rtol=0)
    assert ranks[0]["loss"] == pytest.approx(single["loss"], abs=1e-10)
    A = ranks[0]["state"]["A"]
    assert A.abs().sum(1).max() <= 0.6 * (1 + 1e-12)  # the projection held on the ranks
    assert A.abs().sum(1).max() >= 0.6 * (1 - 1e-9)  # ... and was active (the case is not vacuous)


def test_one_step_gradient_equals_the_full_batch_gradient(runs) -> None:
    """One plain SGD step on the whole data (lr 0.5, no projection): (before - after) / lr is the
    gradient, on every rank equal to the single process's."""
    folder, results = runs
    ranks, single = results[1]
    _, _, start, _ = _case(folder, 1)
    moved = 0.0
    for k, v0 in start.state_dict().items():
        g_single = (v0 - single["state"][k]) / 0.5
        for r in ranks:
            torch.testing.assert_close((v0 - r["state"][k]) / 0.5, g_single, atol=1e-12, rtol=0)
        moved = max(moved, float(g_single.abs().max()))
    assert moved > 1e-3  # a real gradient was compared


def test_distributed_true_without_a_group_is_a_typed_error() -> None:
    with pytest.raises(ConfigurationError, match="init_process_group"):
        Trainer(distributed=True, epochs=1).fit(idl.ImplicitModel(2, 3, 2), (torch.randn(4, 2),
                                                                             torch.tensor([0, 1, 0, 1])))
    with pytest.raises(ConfigurationError, match="distributed"):
        Trainer(distributed="yes")
