"""The compiled CPU kernels (policies.kernels) against the torch backend, the reference: every
family to 1e-12 on and off the manifolds; a row's result bitwise independent of its batch;
orthogonal matrix flows for large generators; expm against scipy; identical rows prepared once;
the torch CUDA path against the kernels where a GPU is present."""

import numpy as np
import pytest
import scipy.linalg
import torch
from numba import njit
from numba.core.registry import CPUDispatcher

from odepolicy import OdepolicyError
from odepolicy.policies import POLICIES, kernels, make_policy

OBS, ACT = 17, 6  # HalfCheetah sizes
SEEDS = [0, 1]
# Default sizes (hidden 16, 25 steps or layers) but for the widest families, trimmed so that
# the torch reference at P = 64 stays quick.
KWARGS = {
    "iso_odetoode": {"hidden": 16},
    "gated_odetoode": {"hidden": 16},
    "base_ode": {"hidden": 16},
    "nanode": {"hidden": 16},
    "hypernet": {"hidden": 8, "hyper_width": 16},
    "deepnet": {"hidden": 16, "layers": 25},
    "deep_resnet": {"hidden": 16, "layers": 25},
    "linear": {},
}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The reference runs as workers do (DESIGN.md principle 4); on a busy machine torch's
    thread pool makes the small batched calls here 100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _pair(name: str, **kwargs):
    """The same policy on the kernels (default on CPU) and on the torch backend."""
    kw = {**KWARGS[name], **kwargs}
    pol, ref = make_policy(name, OBS, ACT, **kw), make_policy(name, OBS, ACT, **kw)
    ref.backend = "torch"
    assert pol.backend == "kernels"
    return pol, ref


def _population(pol, rng, P: int, noise: float = 0.3) -> np.ndarray:
    """Init points (on the manifolds) with Gaussian noise on every other row (off them, as ES
    evaluates perturbed points); Euclidean blocks that init to zero get values too."""
    thetas = np.stack([pol.init(rng) for _ in range(P)])
    thetas += 0.1 * rng.standard_normal(thetas.shape) * (thetas == 0)
    thetas[1::2] += noise * rng.standard_normal(thetas[1::2].shape)
    return thetas


def _assert_close(got: np.ndarray, expected: np.ndarray, tol: float) -> None:
    scale = max(1.0, float(np.abs(expected).max()))
    assert np.all(np.isfinite(got))
    assert np.abs(got - expected).max() <= tol * scale


# -- against the torch reference ---------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(POLICIES))
@pytest.mark.parametrize("P", [1, 7, 64])
@pytest.mark.parametrize("seed", SEEDS)
def test_kernels_match_torch_reference(name, P, seed):
    pol, ref = _pair(name)
    rng = np.random.default_rng(seed)
    thetas, obs = _population(pol, rng, P), 2 * rng.standard_normal((P, OBS))
    got = pol.act(thetas, obs)
    assert got.shape == (P, ACT) and got.dtype == np.float64
    _assert_close(got, ref.act(thetas, obs), 1e-12)


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("iso_odetoode", {"activation": "tanh"}),
        ("gated_odetoode", {"activation": "relu", "gates": 3}),
        ("nanode", {"activation": "tanh", "degree": 2}),
        ("hypernet", {"activation": "relu"}),
        ("deep_resnet", {"activation": "tanh", "layers": 3}),
        ("deep_resnet", {"residual_scale": 0.04}),
        ("base_ode", {"width": 5, "T": 0.5, "eta": 0.1}),
        ("iso_odetoode", {"hidden": 5, "T": 0.3, "eta": 0.1}),
    ],
)
def test_kernels_match_torch_reference_other_options(name, kwargs):
    pol, ref = _pair(name, **kwargs)
    rng = np.random.default_rng(7)
    thetas, obs = _population(pol, rng, 7), rng.standard_normal((7, OBS))
    _assert_close(pol.act(thetas, obs), ref.act(thetas, obs), 1e-12)


@pytest.mark.parametrize("name", ["iso_odetoode", "nanode"])
def test_cuda_euler_loop_matches_on_cpu(name, monkeypatch):
    """The torch backend's Euler loop for CUDA tensors (baddbmm), run here on CPU tensors."""
    pol, ref = _pair(name, activation="tanh")
    monkeypatch.setattr(ref, "_euler", ref._euler_batched)
    rng = np.random.default_rng(9)
    thetas, obs = _population(pol, rng, 7), rng.standard_normal((7, OBS))
    _assert_close(pol.act(thetas, obs), ref.act(thetas, obs), 1e-12)


@pytest.mark.parametrize("name", ["iso_odetoode", "gated_odetoode"])
def test_matrix_flow_matches_torch_reference(name):
    pol, ref = _pair(name)
    theta = _population(pol, np.random.default_rng(2), 2)[1]
    _assert_close(pol.matrix_flow(theta), ref.matrix_flow(theta), 1e-12)


def test_clipping_matches_numpy_and_keeps_nan():
    low, high = np.array([-1.0, -0.5, 0.0, -2, -2, -2]), np.array([1.0, 0.25, 2.0, 2, 2, 2])
    pol = make_policy("linear", OBS, ACT, action_low=low, action_high=high)
    rng = np.random.default_rng(3)
    thetas, obs = rng.standard_normal((5, pol.num_params)), 3 * rng.standard_normal((5, OBS))
    free = make_policy("linear", OBS, ACT)
    np.testing.assert_array_equal(pol.act(thetas, obs), np.clip(free.act(thetas, obs), low, high))
    obs[2, 0] = np.nan
    assert np.isnan(pol.act(thetas, obs)[2]).all()


# -- batch invariance ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(POLICIES))
def test_row_is_bitwise_the_same_alone_and_in_a_batch(name):
    pol = make_policy(name, OBS, ACT, **KWARGS[name])
    rng = np.random.default_rng(4)
    thetas, obs = _population(pol, rng, 64), rng.standard_normal((64, OBS))
    prepared = pol.prepare(thetas)
    batched = pol.step(prepared, obs)
    small = pol.act(thetas[40:47], obs[40:47])
    for i in (0, 3, 41, 63):
        alone = pol.prepare(thetas[i : i + 1])
        for k, v in alone.items():
            np.testing.assert_array_equal(v[0], prepared[k][i])
        np.testing.assert_array_equal(pol.step(alone, obs[i : i + 1])[0], batched[i])
    np.testing.assert_array_equal(small, batched[40:47])


def test_backend_is_checked():
    pol = make_policy("linear", OBS, ACT)
    with pytest.raises(OdepolicyError, match="unknown policy backend 'cuda'"):
        pol.backend = "cuda"
    assert pol.backend == "kernels"


def test_obs_rows_must_match_prepared_rows():
    pol = make_policy("iso_odetoode", OBS, ACT, hidden=4)
    prepared = pol.prepare(np.stack([pol.init(np.random.default_rng(0))] * 2))
    with pytest.raises(ValueError, match="3 observations for 2 prepared rows"):
        pol.step(prepared, np.zeros((3, OBS)))


def test_kernels_compile_without_fastmath_or_threads():
    dispatchers = [v for v in vars(kernels).values() if isinstance(v, CPUDispatcher)]
    assert len(dispatchers) >= 10
    for d in dispatchers:
        assert not d.targetoptions.get("fastmath"), d.py_func.__name__
        assert not d.targetoptions.get("parallel"), d.py_func.__name__


# -- identical rows share one prepare ----------------------------------------------------------
def _count_flow_rows(pol, monkeypatch) -> list[int]:
    rows: list[int] = []
    flow = pol._flow_kernels

    def counting(p):
        rows.append(len(p["bias"]))
        return flow(p)

    monkeypatch.setattr(pol, "_flow_kernels", counting)
    return rows


@pytest.mark.parametrize("name", ["iso_odetoode", "gated_odetoode", "nanode", "hypernet"])
def test_identical_rows_share_one_prepare(name, monkeypatch):
    pol = make_policy(name, OBS, ACT, **KWARGS[name])
    rng = np.random.default_rng(5)
    a, b, c = _population(pol, rng, 3)
    alone = {k: v[0] for k, v in pol.prepare(a[None]).items()}
    rows = _count_flow_rows(pol, monkeypatch)

    centre = pol.prepare(np.stack([a] * 8))  # the centre's evaluation episodes
    assert rows == [1]
    for k, v in centre.items():
        assert v.shape[0] == 8
        for row in v:
            np.testing.assert_array_equal(row, alone[k])

    mixed = np.stack([a, b, a, c, b])
    shared = pol.prepare(mixed)
    assert rows[-1] == 3
    rows.clear()
    for i, theta in enumerate(mixed):
        for k, v in pol.prepare(theta[None]).items():
            np.testing.assert_array_equal(shared[k][i], v[0])

    rows.clear()
    pol.prepare(np.stack([a, b, c, np.nextafter(a, np.inf)]))  # distinct, however slightly
    assert rows == [4]
    signed = np.stack([a, a])
    signed[1, pol.layout["bias"].slice] = -0.0  # equal values, different bits: not shared
    signed[0, pol.layout["bias"].slice] = 0.0
    rows.clear()
    pol.prepare(signed)
    assert rows == [2]


# -- the matrix exponential and the orthogonality of the flows ---------------------------------
@pytest.mark.parametrize("norm", [1e-3, 0.01, 0.1, 0.5, 1.5, 4.0, 10.0, 40.0])
@pytest.mark.parametrize("h", [3, 16])
def test_expm_matches_scipy(norm, h):
    """Each Pade degree (3, 5, 7, 9, 13) and scaling and squaring, on skew and general A."""
    rng = np.random.default_rng(int(norm * 1000) + h)
    for skew in (True, False):
        A = rng.standard_normal((h, h))
        if skew:
            A = A - A.T
        A *= norm / np.abs(A).sum(axis=0).max()
        E = np.empty((h, h))
        kernels.expm_into(A, E, np.empty((9, h, h)))
        expected = scipy.linalg.expm(A)
        assert np.abs(E - expected).max() <= 1e-12 * max(1.0, np.abs(expected).max())
        if skew:
            assert np.linalg.norm(E.T @ E - np.eye(h)) < 1e-13


@njit(cache=True)
def _textbook_solve(A, B):
    """The right-looking Gaussian elimination `kernels._solve_into` replaced (its code before
    stop 15, verbatim): the reference its bits must equal."""
    n = A.shape[0]
    m = B.shape[1]
    for k in range(n):
        piv = k
        big = abs(A[k, k])
        for i in range(k + 1, n):
            if abs(A[i, k]) > big:
                big = abs(A[i, k])
                piv = i
        if piv != k:
            for j in range(n):
                A[k, j], A[piv, j] = A[piv, j], A[k, j]
            for j in range(m):
                B[k, j], B[piv, j] = B[piv, j], B[k, j]
        for i in range(k + 1, n):
            l = A[i, k] / A[k, k]
            for j in range(k + 1, n):
                A[i, j] -= l * A[k, j]
            for j in range(m):
                B[i, j] -= l * B[k, j]
    for k in range(n - 1, -1, -1):
        d = A[k, k]
        for j in range(m):
            B[k, j] /= d
        for i in range(k):
            l = A[i, k]
            for j in range(m):
                B[i, j] -= l * B[k, j]


def test_solve_is_bit_for_bit_the_textbook_elimination():
    """Crout-ordered factorisation and row-wise substitution: the same operations per element
    in the same order, so the same bits, with pivoting everywhere or nowhere, odd sizes
    (unrolling remainders) and Pade-like near-identity denominators."""
    rng = np.random.default_rng(7)
    for trial in range(200):
        n, m = int(rng.integers(1, 70)), int(rng.integers(1, 70))
        if trial % 3 == 0:
            A = rng.standard_normal((n, n))  # rows swapped at most steps
        elif trial % 3 == 1:
            X = rng.standard_normal((n, n))
            A = 30240.0 * np.eye(n) + 100.0 * (X - X.T)  # q(X) of a skew X: no swaps
        else:
            A = np.triu(rng.standard_normal((n, n))) + 5.0 * np.eye(n)
        B = rng.standard_normal((n, m))
        A1, B1, A2, B2 = A.copy(), B.copy(), A.copy(), B.copy()
        _textbook_solve(A1, B1)
        kernels._solve_into(A2, B2)
        assert np.array_equal(B1.view(np.int64), B2.view(np.int64)), (trial, n, m)
        assert np.abs(A @ B2 - B).max() < 1e-8 * max(1.0, np.abs(B2).max() * np.abs(A).max())


@njit
def _tanh_all(x):
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = kernels._tanh(x[i])
    return out


def test_tanh_within_3_ulp_of_libm():
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [
            rng.normal(size=200_000) * 3,
            rng.uniform(-1e-3, 1e-3, 20_000),
            10.0 ** rng.uniform(-300, 1.4, 20_000),
            np.linspace(-25, 25, 20_001),
            [19.0, 19.06, 19.07, 20.0, 21.0, 1e308, 5e-324],
        ]
    )
    x = np.concatenate([x, -x])
    got, ref = _tanh_all(x), np.tanh(x)
    ulps = np.abs(got - ref) / np.spacing(np.abs(ref))
    assert ulps.max() <= 3.0
    assert np.abs(got).max() == 1.0  # saturates exactly, never above 1


def test_tanh_special_values_and_lanes():
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-310, -1e-310])
    got = _tanh_all(x)
    assert np.isnan(got[0]) and list(got[1:3]) == [1.0, -1.0]
    assert got[3] == 0.0 and not np.signbit(got[3]) and np.signbit(got[4])
    assert list(got[5:]) == [1e-310, -1e-310]
    # a vector lane and the scalar remainder loop round alike: 37 values at once or one by one
    x = np.random.default_rng(1).normal(size=37) * 4
    one_by_one = np.concatenate([_tanh_all(x[i : i + 1]) for i in range(37)])
    assert np.array_equal(_tanh_all(x).view(np.int64), one_by_one.view(np.int64))


def test_expm_of_overflowed_matrix_is_nan_not_a_hang():
    A = np.full((4, 4), np.inf)
    E = np.zeros((4, 4))
    kernels.expm_into(A, E, np.empty((9, 4, 4)))
    assert np.isnan(E).all()
    pol = make_policy("iso_odetoode", OBS, ACT, hidden=4)
    theta = pol.init(np.random.default_rng(0))
    theta[pol.layout["Q"].slice] = 1e300
    assert not np.isfinite(pol.act(theta, np.ones(OBS))).all()


def _scale_generator(pol, theta: np.ndarray, target: float) -> np.ndarray:
    """theta with the generator blocks scaled so that ||eta b_psi(0, W_0)||_2 = target."""
    theta = theta.copy()
    p = pol.layout.unflatten(theta)  # views: scaling them scales theta
    W0 = p["W0"]
    if pol.name == "iso_odetoode":
        Q, N = 0.5 * (p["Q"] + p["Q"].T), 0.5 * (p["N"] + p["N"].T)
        M = W0.T @ Q @ W0
        c = np.sqrt(target / (pol.eta * np.linalg.norm(M @ N - N @ M, 2)))
        p["Q"][...] *= c
        p["N"][...] *= c
    else:
        F = np.tanh(W0[None] @ p["U"])
        B = (p["a"][:, None, None] * (F - F.transpose(0, 2, 1))).sum(0)
        p["a"][...] *= target / (pol.eta * np.linalg.norm(B, 2))
    return theta


@pytest.mark.parametrize("name", ["iso_odetoode", "gated_odetoode"])
@pytest.mark.parametrize("target", [0.01, 0.2, 1.0, 3.0, 10.0])
def test_flow_stays_orthogonal_for_large_generators(name, target):
    """||eta b_psi|| up to 10, i.e. generators of norm up to 10 / eta."""
    pol = make_policy(name, OBS, ACT, hidden=16)
    theta = _scale_generator(pol, pol.init(np.random.default_rng(6)), target)
    Ws = pol.matrix_flow(theta)
    assert np.abs(Ws[-1] - Ws[0]).max() > 1e-2  # the flow moved
    for W in Ws:
        assert np.linalg.norm(W.T @ W - np.eye(16)) < 1e-12


# -- the torch CUDA path -----------------------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", sorted(POLICIES))
def test_cuda_path_matches_cpu_kernels(name):
    pol = make_policy(name, OBS, ACT, **KWARGS[name])
    gpu = make_policy(name, OBS, ACT, device="cuda", **KWARGS[name])
    assert gpu.backend == "torch"
    rng = np.random.default_rng(8)
    for P in (1, 7, 64):
        thetas, obs = _population(pol, rng, P), rng.standard_normal((P, OBS))
        _assert_close(gpu.act(thetas, obs), pol.act(thetas, obs), 1e-10)


_DIGESTS = """
import hashlib, json, os, sys
import numpy as np
import odepolicy
from odepolicy import _rollout_kernels as rk
from odepolicy.policies import POLICIES, make_policy

kwargs = json.loads(sys.argv[1])
out = {"features": os.environ.get("NUMBA_CPU_FEATURES", "")}
for name in sorted(POLICIES):
    sizes = [kwargs[name]] + ([{**kwargs[name], "hidden": 64}] if kwargs[name] else [])
    for kw in sizes:
        pol = make_policy(name, 17, 6, **kw)
        rng = np.random.default_rng(5)
        thetas = np.stack([pol.init(rng) for _ in range(9)])
        thetas += 0.3 * rng.standard_normal(thetas.shape)
        prepared = pol.prepare(thetas)
        h = hashlib.sha256()
        for key in sorted(prepared):
            h.update(np.ascontiguousarray(prepared[key]).tobytes())
        for _ in range(3):
            h.update(pol.step(prepared, 2.0 * rng.standard_normal((9, 17))).tobytes())
        out[f"{name}/{kw.get('hidden')}"] = h.hexdigest()
cur, mean, std = np.random.default_rng(6).standard_normal((3, 11, 45))
std = np.abs(std) + 0.1
s, ss, z = np.zeros_like(cur), np.zeros_like(cur), np.empty_like(cur)
rk.observe(cur, mean[0], std[0], 5.0, s, ss, z)
out["observe"] = hashlib.sha256(z.tobytes() + s.tobytes() + ss.tobytes()).hexdigest()
from numba import njit


@njit
def axpy(a, x, y):  # compiled here, not cached, so its machine code can be read
    for j in range(y.shape[0]):
        y[j] += a * x[j]


axpy(2.0, np.ones(64), np.ones(64))
out["zmm"] = "zmm" in next(iter(axpy.inspect_asm().values()))
print(json.dumps(out))
"""


def test_512_bit_vectors_change_no_bit():
    """`odepolicy._widen_numba_vectors` lets LLVM use 512-bit vectors where the CPU has them
    without a clock penalty; every family's prepare and step (default sizes and h = 64) and the
    rollout's observation kernel give the same bytes with it and without it."""
    import json
    import os
    import subprocess
    import sys

    from odepolicy import cpuinfo

    if not {"avx512f", "avx512_vbmi2"} <= cpuinfo()[1]:
        pytest.skip("this CPU keeps numba's default vector width (no AVX512-VBMI2)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_CPU")}
    runs = {}
    for width in ("512", "256"):
        env["ODEPOLICY_NUMBA_VECTORS"] = width
        args = [sys.executable, "-c", _DIGESTS, json.dumps(KWARGS)]
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        runs[width] = json.loads(done.stdout)
    assert runs["512"].pop("features").endswith(",-prefer-256-bit")
    assert runs["256"].pop("features") == ""
    assert (runs["512"].pop("zmm"), runs["256"].pop("zmm")) == (True, False)  # 512-bit registers
    assert runs["512"] == runs["256"]


@pytest.mark.parametrize("marked", [True, False])
def test_numba_cpu_settings_are_decided_per_host_unless_the_user_set_them(marked):
    """Values odepolicy set (marked) and a child inherited are decided again for the child's
    own CPU (a job started on another machine); values without the mark are the user's."""
    import json
    import os
    import subprocess
    import sys

    from odepolicy import cpuinfo

    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_CPU", "ODEPOLICY_"))}
    env.update(NUMBA_CPU_NAME="haswell", NUMBA_CPU_FEATURES="+avx2")
    if marked:
        env["ODEPOLICY_SET_NUMBA_CPU"] = "1"
    code = (
        "import json, os, odepolicy; print(json.dumps([os.environ.get(k) for k in "
        "('NUMBA_CPU_NAME', 'NUMBA_CPU_FEATURES', 'ODEPOLICY_SET_NUMBA_CPU')]))"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    name, features, mark = json.loads(done.stdout)
    if not marked:
        assert (name, features, mark) == ("haswell", "+avx2", None)
    elif {"avx512f", "avx512_vbmi2"} <= cpuinfo()[1]:
        assert name != "haswell" and features.endswith(",-prefer-256-bit") and mark == "1"
    else:  # this CPU keeps numba's defaults: the inherited values are gone
        assert (name, features, mark) == (None, None, None)
