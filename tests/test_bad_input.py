"""Bad input across the public API and the ``idlkit`` command: every case a typed ``IdlError``
whose message names the offending value (or argument), never an untyped exception, a silent
acceptance or a traceback; ``load`` fuzzed over byte flips and truncations; SIGKILL during a
save leaves the old or the new file, never a partial one."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import idlkit as idl
from idlkit import datasets, plot
from idlkit.baselines import MLP, fit_classifier
from idlkit.convert import from_torch
from idlkit.errors import IdlError
from idlkit.io import CheckpointError
from idlkit.lowrank import LowRankImplicitModel
from idlkit.rnn import ImplicitRNN
from idlkit.robust import Budget
from idlkit.sim import SIM
from idlkit.train import Trainer

ROOT = Path(__file__).resolve().parents[1]
NAN, INF = float("nan"), float("inf")


def _model(**kw: object) -> idl.ImplicitModel:
    torch.manual_seed(0)
    return idl.ImplicitModel(3, 4, 2, **kw)


def _nan_A(wellposedness: str) -> idl.ImplicitModel:
    m = _model(wellposedness=wellposedness)
    with torch.no_grad():
        m.A[0, 1] = NAN
    return m


def _lowrank_nan() -> LowRankImplicitModel:
    m = LowRankImplicitModel(3, 4, 2, rank=2)
    with torch.no_grad():
        m.L[0, 0] = NAN
    return m


X3, Y2 = torch.randn(20, 3), torch.randint(0, 2, (20,))
MATS = (torch.randn(4, 4) * 0.1, torch.randn(4, 3), torch.randn(2, 4), torch.randn(2, 3))


def _with(i: int, value: torch.Tensor) -> tuple[torch.Tensor, ...]:
    mats = list(MATS)
    mats[i] = value
    return tuple(mats)


# (case id, call, names: strings one of which the message must contain)
BAD_VALUES = {"a string": "x", "a negative number": -1.0, "NaN": NAN, "infinity": INF, "a bool": True}
CASES: list[tuple[str, Callable[[], object], tuple[str, ...]]] = []

# --- the model's numeric settings, each with every kind of bad value
for arg, bad in (
    ("kappa", ("x", -1.0, 0.0, 1.0, 2.0, NAN, INF, True)),
    ("tol", ("x", -1.0, NAN, INF, True)),
    ("max_iter", ("x", 0, -5, 2.5, NAN, True)),
    ("alpha", ("x", -1.0, 0.0, NAN, INF, True)),
    ("anderson_m", ("x", 0, -1, 1.5, True)),
    ("backward_tol", ("x", -1.0, NAN)),
    ("backward_max_iter", ("x", 0, 2.5)),
):
    for v in bad:
        CASES.append((f"ImplicitModel({arg}={v!r})", lambda a=arg, v=v: _model(**{a: v}), (arg, repr(v))))
for arg, v in (
    ("in_features", 0),
    ("in_features", "3"),
    ("hidden", -1),
    ("hidden", 2.0),
    ("out_features", 0),
    ("out_features", None),
):
    kw = {"in_features": 3, "hidden": 4, "out_features": 2, arg: v}
    CASES.append((f"ImplicitModel({arg}={v!r})", lambda kw=kw: idl.ImplicitModel(**kw), (arg, repr(v))))
for arg, v in (
    ("bias", "no"),
    ("bias", 1),
    ("dtype", torch.int64),
    ("dtype", "float32"),
    ("dtype", np.float64),
    ("activation", "nope"),
    ("activation", 3),
    ("solver", "newton"),
    ("wellposedness", "l2"),
    ("on_nonconvergence", "skip"),
    ("backward_solver", "x"),
    ("backward_stop", "x"),
):
    CASES.append((f"ImplicitModel({arg}={v!r})", lambda a=arg, v=v: _model(**{a: v}), (arg, repr(v), str(v))))
CASES.append(("ImplicitModel(hidden=10**9)", lambda: idl.ImplicitModel(3, 10**9, 2), ("hidden=1000000000",)))

# --- inputs to a model
for name, u in (
    ("int input", torch.ones(2, 3, dtype=torch.int64)),
    ("float64 input", torch.ones(2, 3).double()),
    ("wrong width", torch.ones(2, 5)),
    ("3-D wrong size", torch.ones(2, 2, 2)),
    ("NaN input", torch.full((2, 3), NAN)),
    ("Inf input", torch.full((2, 3), INF)),
    ("a list", [[1.0, 2.0, 3.0]]),
    ("a numpy array", np.ones((2, 3))),
    ("a scalar tensor", torch.tensor(1.0)),
):
    CASES.append((f"model({name})", lambda u=u: _model()(u), ("input", "u")))
CASES.append(("equilibrium(NaN)", lambda: _model().equilibrium(torch.full((1, 3), NAN)), ("NaN",)))

# --- from_matrices
for i, k in enumerate("ABCD"):
    bad_nan = MATS[i].clone()
    bad_nan.view(-1)[0] = NAN
    for label, value, names in (
        ("NaN", bad_nan, (k,)),
        ("int", MATS[i].to(torch.int64), (k, "int64")),
        ("numpy", MATS[i].numpy(), (k, "ndarray")),
        ("1-D", MATS[i].reshape(-1), (k,)),
    ):
        mats = _with(i, value)
        CASES.append(
            (f"from_matrices {label} {k}", lambda m=mats: idl.ImplicitModel.from_matrices(*m), names)
        )

CASES.append(
    ("from_matrices b wrong shape", lambda: idl.ImplicitModel.from_matrices(*MATS, b=torch.zeros(3)), ("b",))
)
CASES.append(
    (
        "from_matrices ||A|| too big for inf",
        lambda: idl.ImplicitModel.from_matrices(*_with(0, torch.eye(4)), wellposedness="inf"),
        ("A", "kappa"),
    )
)

# --- NaN reaching the linear algebra
CASES += [
    ("certificate of NaN A", lambda: _nan_A("inf").certificate(), ("NaN",)),
    ("pf forward with NaN A", lambda: _nan_A("pf")(torch.ones(1, 3)), ("NaN",)),
    ("pf project_ with NaN A", lambda: _nan_A("pf").project_(), ("NaN",)),
    ("low-rank forward with NaN L", lambda: _lowrank_nan()(torch.ones(1, 3)), ("NaN",)),
    ("low-rank certificate with NaN L", lambda: _lowrank_nan().certificate(), ("NaN",)),
    ("pf_eigenvalue NaN", lambda: idl.wellposed.pf_eigenvalue(np.full((3, 3), NAN)), ("NaN",)),
    ("pf_eigenvalue negative", lambda: idl.wellposed.pf_eigenvalue(-np.ones((3, 3))), ("nonnegative",)),
    ("pf_eigenvalue not square", lambda: idl.wellposed.pf_eigenvalue(np.ones((3, 2))), ("(3, 2)",)),
]

# --- low-rank and recurrent models
for arg, v in (("rank", 0), ("rank", 9), ("rank", "2"), ("kappa", 1.5), ("bias", "yes")):
    kw = {"rank": 2, arg: v}
    CASES.append(
        (
            f"LowRankImplicitModel({arg}={v!r})",
            lambda kw=kw: LowRankImplicitModel(3, 4, 2, **kw),
            (arg, repr(v)),
        )
    )
rnn = ImplicitRNN(3, 5, 2)
for name, call in (
    ("h0 float64", lambda: rnn(torch.ones(2, 4, 3), h0=torch.zeros(2, 2, dtype=torch.float64))),
    ("h0 wrong shape", lambda: rnn(torch.ones(2, 4, 3), h0=torch.zeros(3, 2))),
    ("h0 NaN", lambda: rnn(torch.ones(2, 4, 3), h0=torch.full((2, 2), NAN))),
    ("sequence width", lambda: rnn(torch.ones(2, 4, 7))),
    ("sequence NaN", lambda: rnn(torch.full((2, 4, 3), NAN))),
    ("sequence int", lambda: rnn(torch.ones(2, 4, 3, dtype=torch.int64))),
    ("empty sequence", lambda: rnn(torch.ones(2, 0, 3))),
    ("sequence 4-D", lambda: rnn(torch.ones(2, 4, 3, 1))),
    ("mode", lambda: ImplicitRNN(3, 5, 2, mode="seq2many")),
    ("input_size", lambda: ImplicitRNN(0, 5, 2)),
):
    CASES.append((f"ImplicitRNN {name}", call, ("h0", "sequence", "mode", "input_size", "NaN")))

# --- training
for arg, v in (
    ("lr", "0.1"),
    ("lr", -1.0),
    ("lr", NAN),
    ("weight_decay", -1.0),
    ("weight_decay", "x"),
    ("momentum", -0.5),
    ("epochs", 0),
    ("epochs", "3"),
    ("batch_size", 0),
    ("batch_size", 1.5),
    ("patience", 0),
    ("optimizer", "lbfgs"),
    ("schedule", "cyclic"),
    ("loss", "hinge"),
    ("dtype", torch.float16),
    ("penalties", [("nope", 1.0)]),
    ("penalties", [("l1", -1.0)]),
):
    CASES.append((f"Trainer({arg}={v!r})", lambda a=arg, v=v: Trainer(**{a: v}), (arg, repr(v), "penalty")))
for name, data in (
    ("labels float", (X3, Y2.float())),
    ("length mismatch", (X3, Y2[:5])),
    ("NaN features", (X3 * NAN, Y2)),
    ("wrong width", (torch.randn(20, 5), Y2)),
    ("not a pair", X3),
):
    CASES.append(
        (
            f"Trainer.fit({name})",
            lambda d=data: Trainer(epochs=1).fit(_model(), d),
            ("X", "y", "label", "NaN", "feature", "shape", "data"),
        )
    )
CASES.append(
    (
        "Trainer.fit patience without val",
        lambda: Trainer(epochs=1, patience=2).fit(_model(), (X3, Y2)),
        ("val_data",),
    )
)
for arg, v in (("epochs", 0), ("lr", -1.0), ("batch_size", 0)):
    CASES.append(
        (
            f"fit_classifier({arg}={v!r})",
            lambda a=arg, v=v: fit_classifier(nn.Linear(3, 2), X3, Y2, **{"epochs": 1, a: v}),
            (arg,),
        )
    )

# --- robustness
for arg, v in (("epsilon", "0.1"), ("epsilon", -0.1), ("epsilon", NAN), ("k", -1), ("k", 1.5)):
    kw = {"epsilon": 0.1, arg: v}
    CASES.append((f"Budget({arg}={v!r})", lambda kw=kw: Budget(**kw), (arg, repr(v))))
for name, call in (
    ("state_box_bound sigma -1", lambda: idl.robust.state_box_bound(_model(), -1.0)),
    ("state_box_bound sigma NaN", lambda: idl.robust.state_box_bound(_model(), NAN)),
    ("state_box_bound sigma shape", lambda: idl.robust.state_box_bound(_model(), torch.ones(5))),
    ("state_box_bound k=0", lambda: idl.robust.state_box_bound(_model(), 0.1, k=0)),
    ("state_box_bound k=9", lambda: idl.robust.state_box_bound(_model(), 0.1, k=9)),
    ("lipschitz measure", lambda: idl.robust.lipschitz_bound(_model(), measure="l7")),
    ("sensitivity of a Linear", lambda: idl.robust.sensitivity_matrix(nn.Linear(3, 2))),
    ("sensitivity form", lambda: idl.robust.sensitivity(_model(), form="x")),
    ("lp_attack tanh model", lambda: idl.robust.lp_attack(_model(activation="tanh"), torch.zeros(3), 0.1)),
    ("lp_attack u0 shape", lambda: idl.robust.lp_attack(_model(), torch.zeros(5), 0.1)),
    ("attack method", lambda: idl.robust.attack(_model(), torch.zeros(3), 0, 0.1, method="x")),
    ("attack label", lambda: idl.robust.attack(_model(), torch.zeros(3), 7, 0.1, method="fgsm")),
):
    CASES.append(
        (
            name,
            call,
            (
                "sigma",
                "k",
                "measure",
                "Linear",
                "form",
                "relu",
                "ReLU",
                "u0",
                "method",
                "label",
                "7",
                "shape",
            ),
        )
    )

# --- data, conversion, plotting, SIM
for arg, v in (
    ("test_size", 2.0),
    ("test_size", 0.0),
    ("test_size", "x"),
    ("dtype", "foo"),
    ("dtype", np.int32),
    ("split", "val"),
):
    CASES.append(
        (
            f"datasets.load({arg}={v!r})",
            lambda a=arg, v=v: datasets.load("digits", **{a: v}),
            (arg, repr(v), str(v)),
        )
    )
CASES += [
    ("datasets.load unknown", lambda: datasets.load("imagenet"), ("imagenet",)),
    ("datasets.load name int", lambda: datasets.load(3), ("3",)),
]
relu_net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
CASES += [
    ("from_torch empty batch", lambda: from_torch(relu_net, torch.ones(0, 3)), ("example_input",)),
    (
        "from_torch sparse='maybe'",
        lambda: from_torch(relu_net, torch.ones(1, 3), sparse="maybe"),
        ("sparse", "'maybe'"),
    ),
    ("from_torch not a module", lambda: from_torch("net", torch.ones(1, 3)), ("str",)),
    ("from_torch example not a tensor", lambda: from_torch(relu_net, [[1.0, 2.0, 3.0]]), ("example_input",)),
    ("from_torch wrong width", lambda: from_torch(relu_net, torch.ones(1, 5)), ("5", "shape")),
    (
        "from_torch training dropout",
        lambda: from_torch(nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5)).train(), torch.ones(1, 3)),
        ("Dropout", "dropout", "eval"),
    ),
    ("plot.spy of a Linear", lambda: plot.spy(nn.Linear(3, 2)), ("Linear",)),
    ("plot.spy matrix name", lambda: plot.spy(_model(), matrix="Q"), ("Q",)),
]
for arg, v in (
    ("kappa", 0.0),
    ("kappa", 1.5),
    ("objective", "l0"),
    ("backend", "mpi"),
    ("beta", -1.0),
    ("penalty_ratio", 0.0),
    ("n_jobs", 0),
    ("structure", "tree"),
    ("penalty_units", "x"),
    ("rank", 0),
    ("match_eps", -1.0),
    ("l1_ratio", 2.0),
):
    CASES.append((f"SIM({arg}={v!r})", lambda a=arg, v=v: SIM(**{a: v}), (arg, repr(v))))
CASES += [
    (
        "SIM.fit states NaN",
        lambda: SIM(backend="serial").fit(relu_net.double(), torch.full((5, 3), NAN, dtype=torch.float64)),
        ("NaN",),
    ),
    ("baselines MLP width", lambda: MLP(3, [0], 2), ("0", "hidden")),
    ("save a Linear", lambda: idl.save(nn.Linear(3, 2), "/tmp/never.safetensors"), ("Linear",)),
    ("load a missing file", lambda: idl.load("/tmp/idlkit-no-such-file.safetensors"), ("no-such-file",)),
]


# --- well-posedness toolkit, activations, reference networks
_NAN_M = torch.full((3, 3), NAN)


def _project_nan() -> None:
    m = _model()
    with torch.no_grad():
        m.A[1, 2] = NAN
    m.project_()


def _from_dense_nan() -> None:
    m = _model()
    with torch.no_grad():
        m.A[1, 2] = NAN
    LowRankImplicitModel.from_dense(m, rank=2)


CASES += [
    ("inf_norm NaN", lambda: idl.wellposed.inf_norm(_NAN_M), ("NaN",)),
    ("inf_norm of a string", lambda: idl.wellposed.inf_norm("x"), ("str",)),
    ("mu_inf NaN", lambda: idl.wellposed.mu_inf(_NAN_M), ("NaN",)),
    ("mu_inf not square", lambda: idl.wellposed.mu_inf(torch.ones(3, 2)), ("(3, 2)",)),
    ("project_inf_ball NaN", lambda: idl.wellposed.project_inf_ball(_NAN_M, 0.5), ("NaN",)),
    ("project_inf_ball kappa", lambda: idl.wellposed.project_inf_ball(torch.ones(3, 3), -1.0), ("-1.0",)),
    ("project_mu_set NaN", lambda: idl.wellposed.project_mu_set(_NAN_M, 0.5), ("NaN",)),
    ("wellposed.check NaN", lambda: idl.wellposed.check(_NAN_M), ("NaN",)),
    ("wellposed.check of a string", lambda: idl.wellposed.check("model"), ("str",)),
    ("rescale a tanh model", lambda: idl.wellposed.rescale(_model(activation="tanh")), ("tanh", "Tanh")),
    ("project_ with NaN A", _project_nan, ("NaN",)),
    ("LowRank.from_dense NaN A", _from_dense_nan, ("NaN",)),
    (
        "get_activation blockwise without segments",
        lambda: idl.get_activation({"name": "blockwise"}),
        ("segments",),
    ),
    ("get_activation centered without base", lambda: idl.get_activation({"name": "centered"}), ("base",)),
    ("get_activation dict without name", lambda: idl.get_activation({"slope": 0.1}), ("name",)),
    ("get_activation 3", lambda: idl.get_activation(3), ("int",)),
    ("get_activation bad kwargs", lambda: idl.get_activation("leaky_relu", slope="x"), ("slope", "'x'")),
    ("datasets.load seed -1", lambda: datasets.load("digits", seed=-1), ("seed", "-1")),
    ("datasets.load seed str", lambda: datasets.load("digits", seed="x"), ("seed", "'x'")),
    ("resnet20 num_classes", lambda: idl.convert.resnet20(num_classes=-1), ("num_classes", "-1")),
    ("resnet20 width", lambda: idl.convert.resnet20(width=0), ("width", "0")),
    ("load map_location", lambda: idl.load(ROOT / "pyproject.toml", map_location="nope"), ("'nope'",)),
    ("load a path that is an int", lambda: idl.load(3), ("3",)),
    ("save to a path that is an int", lambda: idl.save(_model(), 3), ("3",)),
    ("load a text file", lambda: idl.load(ROOT / "pyproject.toml"), ("pyproject.toml",)),
    ("penalty l1 of a string", lambda: idl.train.l1("x"), ("str",)),
    (
        "penalty lipschitz int",
        lambda: idl.train.lipschitz_penalty(torch.zeros(4, 4, dtype=torch.int64), *MATS[1:]),
        ("int64",),
    ),
    (
        "from_torch int64 example",
        lambda: from_torch(relu_net, torch.ones(1, 3, dtype=torch.int64)),
        ("int64", "example_input.float()"),
    ),
]


@pytest.mark.parametrize("call,names", [(c, n) for _, c, n in CASES], ids=[i for i, _, _ in CASES])
def test_bad_input_is_a_typed_error_naming_the_value(
    call: Callable[[], object], names: tuple[str, ...]
) -> None:
    with pytest.raises(IdlError) as info:
        call()
    msg = str(info.value)
    assert any(n in msg for n in names), f"message names none of {names}: {msg}"


def test_the_table_is_wide() -> None:
    assert len(CASES) >= 150


# ----------------------------------------------------------------------------- checkpoints


def test_load_fuzz_never_crashes_and_never_passes_silently(tmp_path: Path) -> None:
    """Random byte flips and truncations: a CheckpointError, or a model equal to the saved one,
    or (a flip that broke the hash's own key) a CheckpointWarning; never another exception and
    never a silently changed model."""
    import warnings

    from idlkit.io import CheckpointWarning

    path = tmp_path / "m.safetensors"
    idl.save(_model(), path)
    ref = idl.load(path)
    raw = path.read_bytes()
    rng = np.random.default_rng(0)
    bad = tmp_path / "bad.safetensors"
    outcomes = {"error": 0, "identical": 0, "warned": 0}
    for trial in range(300):
        data = bytearray(raw)
        if trial % 3 == 0:
            data = data[: int(rng.integers(0, len(raw)))]
        else:
            for _ in range(int(rng.integers(1, 4))):
                i = int(rng.integers(0, len(raw)))
                data[i] ^= 1 << int(rng.integers(0, 8))
        bad.write_bytes(bytes(data))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                m = idl.load(bad)
            except CheckpointError:
                outcomes["error"] += 1
                continue
        same = all(
            torch.equal(a, b) for a, b in zip(m.state_dict().values(), ref.state_dict().values(), strict=True)
        )
        if any(issubclass(w.category, CheckpointWarning) for w in caught):
            outcomes["warned"] += 1
            continue
        assert same, f"trial {trial}: a changed model loaded without an error or a warning"
        outcomes["identical"] += 1
    assert outcomes["error"] >= 250


_PEAK_RSS = """
import resource, sys, warnings
import idlkit as idl
from idlkit.io import CheckpointError
warnings.simplefilter("ignore")
try:
    idl.load(sys.argv[1])
    print("loaded")
except CheckpointError:
    print("refused")
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux
"""


def test_header_claiming_more_than_its_payload_is_refused_without_allocating(tmp_path: Path) -> None:
    """A small file whose config claims hidden = 5000 (or 10**7) is refused before the model is
    built: the peak memory of a process that tries to load it stays within a few MB of one that
    loads the honest file (the old loader allocated the full model first: +490 MB at 5000)."""
    import json

    from idlkit.io import read_tensors, write_tensors

    path = tmp_path / "m.safetensors"
    idl.save(_model(), path)
    tensors, meta = read_tensors(path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}

    def peak(file: Path) -> tuple[str, int]:
        out = subprocess.run(
            [sys.executable, "-c", _PEAK_RSS, str(file)],
            capture_output=True,
            text=True,
            env=env,
            check=True,
            timeout=120,
        ).stdout.split()
        return out[0], int(out[1])

    status, base = peak(path)
    assert status == "loaded"
    for hidden in (5000, 10**7):
        meta2 = json.loads(json.dumps(meta))
        meta2["config"]["hidden"] = hidden
        forged = tmp_path / f"forged{hidden}.safetensors"
        write_tensors(forged, tensors, meta2)  # a valid hash: only the claim is false
        with pytest.raises(CheckpointError, match="do not match the config"):
            idl.load(forged)
        status, rss = peak(forged)
        assert status == "refused"
        assert rss - base < 20 * 1024 + 50 * forged.stat().st_size // 1024  # KiB: well under the 190 MB of A


def test_flipped_weight_byte_and_nan_weights_are_refused(tmp_path: Path) -> None:
    from idlkit.io import read_tensors, write_tensors

    path = tmp_path / "m.safetensors"
    idl.save(_model(), path)
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x40  # inside the last tensor's bytes
    flipped = tmp_path / "flipped.safetensors"
    flipped.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="SHA-256"):
        idl.load(flipped)
    tensors, meta = read_tensors(path)
    tensors["C"] = tensors["C"].clone()
    tensors["C"][0, 0] = NAN
    nan_file = tmp_path / "nan.safetensors"
    write_tensors(nan_file, tensors, meta)
    with pytest.raises(CheckpointError, match="NaN"):
        idl.load(nan_file)


def test_old_files_without_a_hash_load_with_a_warning(tmp_path: Path) -> None:
    import json

    from safetensors.torch import save as st_save

    from idlkit.io import CheckpointWarning, read_tensors

    path = tmp_path / "m.safetensors"
    m = _model()
    idl.save(m, path)
    tensors, meta = read_tensors(path)
    old = tmp_path / "old.safetensors"
    old.write_bytes(st_save(tensors, metadata={"idlkit": json.dumps(meta)}))  # no "sha256"
    with pytest.warns(CheckpointWarning, match="no content hash"):
        loaded = idl.load(old)
    assert torch.equal(loaded.A, m.A)


def test_os_errors_are_typed_and_keep_their_cause(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="directory"):
        idl.save(_model(), tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CheckpointError) as info:
        idl.save(_model(), blocker / "m.safetensors")
    assert isinstance(info.value.__cause__, OSError)


def test_stale_temporaries_of_a_dead_writer_are_cleaned_by_the_next_save(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    pid = int(dead.stdout)  # a process that has exited
    stale = tmp_path / f".m.safetensors.{pid}.abc123.tmp"
    stale.write_bytes(b"\0" * 1000)
    alive = tmp_path / f".m.safetensors.{os.getpid()}.def456.tmp"  # ours: left alone
    alive.write_bytes(b"\0")
    idl.save(_model(), path)
    assert not stale.exists() and alive.exists() and path.exists()


def test_sigkill_during_save_leaves_the_old_or_the_new_file(tmp_path: Path) -> None:
    """A writer killed (SIGKILL) at a random moment of a save loop leaves the old or the new file.
    The writer is a child forked from this process with its model built (a fresh interpreter per
    writer cost ~2.5 s of imports); it only saves, and the kill ends it with no teardown."""
    import time

    path = tmp_path / "m.safetensors"
    torch.manual_seed(1)
    old = idl.ImplicitModel(50, 1500, 10)
    idl.save(old, path)
    torch.manual_seed(2)
    new = idl.ImplicitModel(50, 1500, 10)
    rng = np.random.default_rng(0)
    written = 0
    for _ in range(3):
        pid = os.fork()
        if pid == 0:  # the writer
            try:
                while True:
                    idl.save(new, path)
            finally:
                os._exit(1)
        time.sleep(float(rng.uniform(0.05, 0.4)))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        loaded = idl.load(path)  # never partial: the hash and the header check would refuse it
        assert loaded.hidden == 1500 and math.isfinite(float(loaded.A.abs().sum()))
        is_new = torch.equal(loaded.A, new.A)
        assert is_new or torch.equal(loaded.A, old.A)  # the old or the new file, nothing else
        written += is_new
    assert written  # the writer did replace the file (the kills did not all land before a save)
    idl.save(old, path)  # the next save cleans the dead writers' temporaries
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


# ----------------------------------------------------------------------------- the command line

CLI = [
    (["demo", "--kappa", "2"], "--kappa"),
    (["demo", "--hidden", "-1"], "--hidden"),
    (["demo", "--epochs", "-1"], "--epochs"),
    (["demo", "--epochs", "x"], "--epochs"),
    (["train", "--data", "digits", "--out", "."], "directory"),
    (["train", "--data", "digits", "--lr", "-1"], "--lr"),
    (["train", "--data", "digits", "--kappa", "1.5"], "--kappa"),
    (["train", "--data", "digits", "--val-fraction", "1.5"], "--val-fraction"),
    (["train", "--data", "nope", "--epochs", "1"], "nope"),
    (["train"], "--data"),
    (["sim", "--data", "digits", "--kappa", "0"], "--kappa"),
    (["sim", "--data", "digits", "--hidden", "a,b"], "--hidden"),
    (["sim", "--data", "digits", "--objective", "l0", "--epochs", "1", "--samples", "20"], "l0"),
    (["nope"], "nope"),
]


# The cases run as `python -m idlkit.cli ARGV`, each in its own process forked from one driver that
# imported idlkit.cli once (a fresh interpreter per case cost ~2 s of start-up and imports, 14 times);
# the child ends the way the interpreter ends `python -m` (a SystemExit's code, its message when not
# an int; any other exception: the traceback and status 1), then exits without the interpreter's
# teardown. One case also runs in a fresh interpreter (test_cli_in_a_fresh_interpreter).
_CLI_DRIVER = """
import json, os, runpy, sys, traceback
import idlkit.cli  # its imports (torch, typer, ...) once; the module itself runs afresh in each child
del sys.modules["idlkit.cli"]
folder, cases = sys.argv[1], json.loads(sys.argv[2])
codes = []
for i, argv in enumerate(cases):
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.makedirs(f"{folder}/{i}")
        os.chdir(f"{folder}/{i}")
        for fd, name in ((1, "out"), (2, "err")):
            os.dup2(os.open(f"{folder}/{i}.{name}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        sys.argv = ["idlkit", *argv]
        try:
            runpy.run_module("idlkit.cli", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exc:  # what the interpreter does with it
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
            if not isinstance(exc.code, int) and exc.code is not None:
                print(exc.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # no interpreter teardown: ~0.9 s per child with torch loaded
    codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
print(json.dumps(codes))
"""


def _cli_env() -> dict[str, str]:
    path = os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path}


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[int, str, str]]:
    """(exit status, stdout, stderr) of every CLI case, in the order of CLI."""
    import json

    folder = tmp_path_factory.mktemp("cli")
    proc = subprocess.run([sys.executable, "-c", _CLI_DRIVER, str(folder), json.dumps([a for a, _ in CLI])],
                          capture_output=True, text=True, env=_cli_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    codes = json.loads(proc.stdout.splitlines()[-1])
    return [(code, (folder / f"{i}.out").read_text(), (folder / f"{i}.err").read_text())
            for i, code in enumerate(codes)]


def _check_cli_error(returncode: int, stdout: str, stderr: str, names: str) -> None:
    assert returncode != 0
    err = stderr.strip()
    assert "Traceback" not in err + stdout
    assert err.startswith("error:") and len(err.splitlines()) == 1 and names in err, err


@pytest.mark.parametrize("case", range(len(CLI)), ids=[" ".join(a) for a, _ in CLI])
def test_cli_exits_nonzero_with_one_line_and_no_traceback(case: int, cli_runs) -> None:
    _check_cli_error(*cli_runs[case], CLI[case][1])


@pytest.mark.parametrize("argv,names", [CLI[0]], ids=[" ".join(CLI[0][0])])
def test_cli_in_a_fresh_interpreter(argv: list[str], names: str, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "idlkit.cli", *argv], capture_output=True, text=True,
                          cwd=tmp_path, env=_cli_env(), timeout=120)
    _check_cli_error(proc.returncode, proc.stdout, proc.stderr, names)


@pytest.mark.parametrize(
    "field,edit",
    [
        ("epoch", lambda t, m: m.pop("epoch")),
        ("epoch", lambda t, m: m.update(epoch=-5)),
        ("epoch", lambda t, m: m.update(epoch="1")),
        ("history", lambda t, m: m.update(history=[])),
        ("stopped", lambda t, m: m.update(stopped="no")),
        ("best", lambda t, m: m.update(best=[1.0])),
        ("optimizer", lambda t, m: m.pop("optimizer")),
        ("optimizer.state.0.exp_avg", lambda t, m: t.update({"opt/0/exp_avg": torch.zeros(7, 7)})),
        ("rng/batch_order", lambda t, m: t.pop("rng/batch_order")),
        ("model/A", lambda t, m: t.update({"model/A": torch.full_like(t["model/A"], NAN)})),
    ],
)
def test_trainer_resume_refuses_a_bad_checkpoint_naming_the_field(tmp_path: Path, field: str, edit) -> None:
    from idlkit.io import read_tensors, write_tensors

    ckpt = tmp_path / "run.safetensors"
    Trainer(epochs=1, batch_size=10).fit(_model(), (X3, Y2), checkpoint=ckpt)
    tensors, meta = read_tensors(ckpt)
    edit(tensors, meta)
    write_tensors(ckpt, tensors, meta)
    with pytest.raises(CheckpointError, match=field.replace(".", r"\.")):
        Trainer(epochs=2, batch_size=10).fit(_model(), (X3, Y2), checkpoint=ckpt, resume=True)
