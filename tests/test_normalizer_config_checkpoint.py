"""Observation statistics, config parsing and checkpoint files: the plumbing a run relies on."""

import numpy as np
import pytest

from odepolicy import OdepolicyError
from odepolicy.checkpoint import read_checkpoint, save_checkpoint
from odepolicy.config import config_from_dict, load_config
from odepolicy.normalizer import ObsNormalizer, RunningStats


def test_merged_stats_equal_stats_of_the_concatenation():
    rng = np.random.default_rng(0)
    chunks = [rng.normal(3.0, 2.0, size=(n, 5)) for n in (1, 7, 40, 3)]
    merged = RunningStats(5)
    for c in chunks:
        part = RunningStats(5)
        for row in c:
            part.push(row)
        merged.merge(part)
    allx = np.concatenate(chunks)
    assert merged.count == len(allx)
    assert np.allclose(merged.mean, allx.mean(0), atol=1e-12)
    assert np.allclose(merged.var, allx.var(0, ddof=1), atol=1e-12)
    batch = RunningStats(5)
    batch.push_batch(allx)
    assert np.allclose(batch.var, merged.var, atol=1e-12)


def test_normalizer_is_frozen_between_merges_and_can_be_off():
    norm = ObsNormalizer(2)
    stats = RunningStats(2)
    stats.push_batch(np.array([[1.0, 10.0], [3.0, 30.0]]))
    norm.merge(stats)
    x = np.array([2.0, 20.0])
    assert np.allclose(norm.normalize(x), 0.0)
    assert norm.stats.count == 2  # normalize never updates statistics
    restored = ObsNormalizer.from_state(norm.state())
    assert np.array_equal(
        restored.normalize(np.array([3.0, 30.0])), norm.normalize(np.array([3.0, 30.0]))
    )
    off = ObsNormalizer(2, enabled=False)
    off.merge(stats)
    assert np.array_equal(off.normalize(x), x)


def test_config_overrides_and_errors_name_the_key(tmp_path):
    cfg = config_from_dict(
        {"env": "Swimmer-v5", "es": {"sigma": 0.05}}, ["es.directions=8", "policy.kwargs.hidden=4"]
    )
    assert cfg.es.sigma == 0.05 and cfg.es.directions == 8 and cfg.policy.kwargs == {"hidden": 4}
    with pytest.raises(OdepolicyError, match="'es.sigmaa'"):
        config_from_dict({"es": {"sigmaa": 1}})
    with pytest.raises(OdepolicyError, match="'iterations'"):
        config_from_dict({"iterations": "many"})
    with pytest.raises(OdepolicyError, match="'es.shaping'|es.shaping"):
        config_from_dict({"es": {"shaping": "magic"}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("env: [unclosed\n")
    with pytest.raises(OdepolicyError, match="malformed YAML"):
        load_config(bad)


def test_checkpoint_roundtrip_and_truncation(tmp_path):
    arrays = {"a": np.arange(5.0), "b": np.eye(3)}
    path = save_checkpoint(tmp_path / "c.npz", arrays, {"x": 1})
    back, meta = read_checkpoint(path)
    assert meta["x"] == 1 and np.array_equal(back["b"], np.eye(3))
    data = path.read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(OdepolicyError, match="damaged or truncated"):
        read_checkpoint(cut)
    assert not list(tmp_path.glob(".tmp-*"))  # atomic writes leave nothing behind
