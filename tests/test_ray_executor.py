"""Ray as the executor: same seed, same rollouts and rows as in-process; same store and cache.

A local ``ray.init(num_cpus=2)`` per module. The LM is the deterministic toy scorer (so equality is
exact) except in the CLI test, which runs the bundled SmolLM2 in two Ray actors. Skipped where the ``ray``
extra is missing, unless ``RL_SELECT_REQUIRE_RAY=1`` (set by CI).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from rl_select.experiments.config import RunConfig

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def local_ray(ray_extra: None) -> Iterator[None]:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _cfg(data_root: Path, tmp_path: Path, name: str, **kw) -> RunConfig:
    base = dict(task="sst2", data=str(data_root / "sst2"), k=2, n_candidates=6, n_val=8, train_pool=40, episodes=6,
                n_pool=6, n_test=12, seeds=[0], cache=str(tmp_path / f"{name}.sqlite"),
                store=str(tmp_path / f"{name}.jsonl"), out=str(tmp_path / "runs"))
    base.update(kw)
    return RunConfig.from_dict(base)


def _keys(path: str) -> set[str]:
    with sqlite3.connect(path) as db:
        return {k for (k,) in db.execute("SELECT key FROM scores")}


def _ray(worker_cls, cfg: RunConfig, workers: int = 2, **kw):
    from rl_select.experiments.executors import RayExecutor

    return RayExecutor(worker_cls, cfg, workers=workers, **kw)


def _local_collect(cfg: RunConfig):
    from rl_select.experiments.executors import LocalExecutor
    from rl_select.experiments.training import EpisodeWorker, build_task_envs, collect_rollouts
    from rl_select.testing import toy_scorer_factory

    envs = build_task_envs(cfg, toy_scorer_factory(cfg))
    return collect_rollouts(cfg, LocalExecutor(EpisodeWorker(envs))), envs


def _ray_collect(cfg: RunConfig, workers: int = 2, factory=None):
    from rl_select.experiments.training import EpisodeWorker, collect_rollouts
    from rl_select.testing import toy_scorer_factory

    return collect_rollouts(cfg, _ray(EpisodeWorker, cfg, workers, factory=factory or toy_scorer_factory))


def _local_grid(cfg: RunConfig, scorer_for):
    from rl_select.experiments.executors import LocalExecutor
    from rl_select.experiments.harness import EvalWorker, TaskData, run_grid

    data = TaskData.load(cfg)
    return run_grid(cfg, LocalExecutor(EvalWorker(cfg, data, scorer_for(cfg)(data.spec)))).rows


def test_same_seed_gives_the_same_rollouts_as_in_process(local_ray, data_root: Path, tmp_path: Path) -> None:
    local = _cfg(data_root, tmp_path, "local")
    _, envs = _local_collect(local)
    envs[0].scorer.cache.close()
    remote = _cfg(data_root, tmp_path, "ray")
    reports = _ray_collect(remote)
    assert reports[0]["episodes"] == 6 and reports[0]["written"] == 6
    assert reports[0]["lm_queries"] > 0
    assert Path(remote.agent.store).read_bytes() == Path(local.agent.store).read_bytes()
    # every score the actors computed is in the driver's cache: the same entries the in-process run stored
    assert _keys(remote.cache) == _keys(local.cache)


def test_ray_collection_resumes_to_the_same_file(local_ray, data_root: Path, tmp_path: Path) -> None:
    local = _cfg(data_root, tmp_path, "local", episodes=5)
    _local_collect(local)
    remote = _cfg(data_root, tmp_path, "ray", episodes=2)
    _ray_collect(remote)
    remote.agent.episodes = 5
    report = _ray_collect(remote)[0]
    assert report["written"] == 3
    assert Path(remote.agent.store).read_bytes() == Path(local.agent.store).read_bytes()
    again = _ray_collect(remote)[0]  # nothing left: no actors
    assert again["written"] == 0 and again["lm_queries"] == 0


def test_evaluation_on_ray_gives_the_in_process_rows(local_ray, data_root: Path, tmp_path: Path) -> None:
    from rl_select.experiments.harness import EvalWorker, run_grid
    from rl_select.testing import toy_scorer_factory

    fields = ("selector", "seed", "k", "test_acc", "val_acc", "n_test", "demos", "select_queries")
    local = _cfg(data_root, tmp_path, "local", seeds=[0, 1], selectors=["zero_shot", "random", "max_entropy"])
    rows = _local_grid(local, toy_scorer_factory)
    remote = _cfg(data_root, tmp_path, "ray", seeds=[0, 1], selectors=["zero_shot", "random", "max_entropy"])
    seen: list[tuple[int, str]] = []
    got, spent, fingerprint = run_grid(remote, _ray(EvalWorker, remote, factory=toy_scorer_factory),
                                       on_row=lambda r: seen.append((r["seed"], r["selector"])))
    assert [{f: r[f] for f in fields} for r in got] == [{f: r[f] for f in fields} for r in rows]
    assert seen == [(r["seed"], r["selector"]) for r in rows]  # rows arrive in the in-process order
    assert spent.queries == sum(r["select_queries"] + r["eval_queries"] for r in got)
    assert fingerprint == "cached-toy:v1"
    assert _keys(remote.cache) == _keys(local.cache)


def test_unreachable_cluster_is_one_clear_line(ray_extra: None, monkeypatch) -> None:
    from rl_select.errors import ConfigError
    from rl_select.experiments.executors import _probe, init_ray, resolve_address

    monkeypatch.setenv("RL_SELECT_RAY_ADDRESS", "ray://127.0.0.1:1")
    assert resolve_address(None) == "ray://127.0.0.1:1" and resolve_address("auto") == "auto"
    with pytest.raises(ConfigError, match="workers=0"):
        init_ray(None, 0)
    # init_ray dials the address before ray.init (which would wait minutes for an absent cluster)
    for address in ("127.0.0.1:1", "ray://127.0.0.1:1"):
        with pytest.raises(ConfigError, match=r"cannot reach the Ray cluster at .*127\.0\.0\.1:1") as info:
            _probe(address)
        assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="expected 'auto', host:port"):
        _probe("nonsense")


@pytest.mark.model
def test_cli_collect_and_baselines_on_ray_with_the_real_model(local_ray, data_root: Path, tmp_path: Path) -> None:
    """`rl-select collect/baselines --executor ray`: two actors each load SmolLM2; the store and the table
    match the in-process run (actions exactly; LM numbers to float noise). fp32: bf16 sums depend on the
    thread count (an actor has 1 thread, the driver 2), which moves features by ~0.04 on a bf16 CPU."""
    import json

    from typer.testing import CliRunner

    from agents.rollouts import RolloutStore
    from rl_select.cli import app

    common = ["--task", "sst2", "--data", str(data_root / "sst2"), "--dtype", "fp32", "--k", "2", "--n-val", "4",
              "--seeds", "0", "--n-candidates", "4", "--episodes", "3", "--out", str(tmp_path / "runs")]
    stores = {}
    for executor in ("local", "ray"):
        store = tmp_path / f"{executor}.jsonl"
        res = CliRunner().invoke(app, ["collect", *common, "--store", str(store), "--executor", executor,
                                       "--workers", "2", "--cache", str(tmp_path / f"{executor}.sqlite")])
        assert res.exit_code == 0, res.output
        stores[executor] = RolloutStore(store).load()
    for a, b in zip(stores["local"], stores["ray"], strict=True):
        assert (a.actions, a.chosen, a.env_seed) == (b.actions, b.chosen, b.env_seed)
        np.testing.assert_allclose(a.rewards, b.rewards, atol=1e-6)
        np.testing.assert_allclose(a.states, b.states, atol=1e-4)
        np.testing.assert_allclose(a.candidates, b.candidates, atol=1e-4)
    summaries = {}
    for executor in ("local", "ray"):
        res = CliRunner().invoke(app, [
            "baselines", "--task", "sst2", "--data", str(data_root / "sst2"), "--dtype", "fp32", "--k", "2",
            "--n-pool", "4",
            "--n-val", "4", "--n-test", "8", "--seeds", "0,1", "--selectors", "zero_shot,random",
            "--executor", executor, "--cache", str(tmp_path / f"b-{executor}.sqlite"),
            "--out", str(tmp_path / f"runs-{executor}")])
        assert res.exit_code == 0, res.output
        run = next((tmp_path / f"runs-{executor}").iterdir())
        doc = json.loads((run / "results.json").read_text())
        summaries[executor] = [(r["selector"], r["seed"], r["test_acc"], r["demos"]) for r in doc["rows"]]
        assert doc["config"]["executor"]["kind"] == executor and doc["lm_calls"]["queries"] > 0
    assert summaries["ray"] == summaries["local"]


def test_store_of_another_seed_is_refused_before_ray_starts(local_ray, data_root: Path, tmp_path: Path) -> None:
    from rl_select.errors import DataError

    cfg = _cfg(data_root, tmp_path, "ray", episodes=2)
    _ray_collect(cfg, workers=1)
    other = _cfg(data_root, tmp_path, "ray", episodes=4, seeds=[1])
    with pytest.raises(DataError, match="holds episodes of seed 0"):
        _ray_collect(other, workers=1)


def test_a_worker_error_surfaces_as_the_original_one_line_error(local_ray, data_root: Path, tmp_path: Path) -> None:
    from rl_select.errors import ModelError

    def broken(cfg):  # a nested function: Ray ships it by value
        from rl_select.errors import ModelError

        raise ModelError("no model 'nope' on this worker; expected a folder or hub id")

    cfg = _cfg(data_root, tmp_path, "ray", episodes=2)
    with pytest.raises(ModelError, match="^no model 'nope' on this worker") as info:
        _ray_collect(cfg, workers=1, factory=broken)
    assert "\n" not in str(info.value)
    assert not Path(cfg.agent.store).exists()


def test_ray_workers_as_clients_of_a_server_give_the_in_process_rows(local_ray, data_root: Path,
                                                                     tmp_path: Path) -> None:
    """--backend openai with --executor ray: each actor is a light client of the same server."""
    from test_openai_compat import MODEL, FakeServer

    from rl_select.experiments.harness import EvalWorker, run_grid, scorer_factory

    server = FakeServer("echo").start()
    try:
        opts = dict(backend="openai", base_url=server.url, model=MODEL, seeds=[0, 1],
                    selectors=["zero_shot", "random"])
        local = _cfg(data_root, tmp_path, "local", **opts)
        rows = _local_grid(local, scorer_factory)
        asked = server.requests
        remote = _cfg(data_root, tmp_path, "ray", **opts)
        got, spent, fingerprint = run_grid(remote, _ray(EvalWorker, remote))
        assert [(r["selector"], r["seed"], r["test_acc"], r["demos"]) for r in got] == \
            [(r["selector"], r["seed"], r["test_acc"], r["demos"]) for r in rows]
        assert server.requests > asked and fingerprint == f"openai:{server.url}:{MODEL}:direct:0"
        assert _keys(remote.cache) == _keys(local.cache)
    finally:
        server.stop()
