"""SelectorPolicy: save/load round trip, refusal of bad files, greedy selection with STOP, prompts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from rl_select.errors import PolicyError, SelectionError
from rl_select.lm.spec import ScorerSpec
from rl_select.mdp.artifacts import FORMAT_NAME, FORMAT_VERSION, METADATA_KEY, artifact_sha256, tensors_sha256
from rl_select.mdp.features import FeatureSpec
from rl_select.mdp.policy import PolicyWarning, SelectorPolicy
from rl_select.mdp.qnet import CandidateQNet
from rl_select.tasks import get_task
from rl_select.testing import ToyScorer, sentiment_examples
from rl_select.types import Example

_examples = sentiment_examples


@pytest.fixture
def task():
    return get_task("sst2")


@pytest.fixture
def pool():
    return _examples(10, seed=1)


@pytest.fixture
def val():
    return _examples(6, seed=2)


def _policy(task, kind: str = "active", *, k: int = 4, allow_stop: bool = False, min_len: int = 0,
            hidden: tuple[int, ...] = (16, 8), seed: int = 0) -> SelectorPolicy:
    spec = FeatureSpec(kind)
    torch.manual_seed(seed)
    qnet = CandidateQNet(spec.state_dim, spec.cand_dim, hidden)
    return SelectorPolicy(
        qnet, feature_spec=spec, k=k, task=task, scorer_spec=None, scorer_fingerprint=ToyScorer(task).fingerprint,
        training={"agent": "dqn", "total_timesteps": 123, "seed": seed}, allow_stop=allow_stop, min_len=min_len,
    )


def _data_start(path: Path) -> int:
    """Offset of the tensor data region in a safetensors file (after the 8-byte length and the header)."""
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


def _rewrite_metadata(src: Path, dst: Path, edit, *, reseal: bool = True) -> None:
    """Copy ``src`` to ``dst`` with the same tensors and ``edit(doc)`` applied to the metadata document.

    ``reseal`` recomputes the whole-document ``sha256`` (a file a writer produced with those contents, to reach
    the checks behind the hash); without it the old hashes are kept (a hand edit)."""
    with safe_open(str(src), framework="pt") as f:
        doc = json.loads(f.metadata()[METADATA_KEY])
    edit(doc)
    if reseal and "sha256" in doc:
        doc["sha256"] = artifact_sha256(doc, doc["tensors_sha256"])
    save_file(load_file(str(src)), str(dst), metadata={METADATA_KEY: json.dumps(doc)})


def _refused(path: Path, *words: str, **kwargs) -> str:
    with pytest.raises(PolicyError) as info:
        SelectorPolicy.load(path, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg, msg
    for w in words:
        assert w in msg, msg
    return msg


# --------------------------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("kind", ["active", "labelled"])
def test_round_trip_same_tensors_and_choices(tmp_path, task, pool, val, kind):
    policy = _policy(task, kind)
    path = policy.save(tmp_path / "sub" / "policy.safetensors")
    assert path.is_file() and sorted(os.listdir(path.parent)) == ["policy.safetensors"]  # no temp file left

    loaded = SelectorPolicy.load(path, expect_feature_set=kind)
    a, b = policy.qnet.state_dict(), loaded.qnet.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    assert loaded.describe() == policy.describe()
    assert (loaded.k, loaded.allow_stop, loaded.min_len, loaded.task, loaded.feature_spec) == (
        4, False, 0, task, FeatureSpec(kind))

    first = policy.select(pool, scorer=ToyScorer(task), val=val)
    again = loaded.select(pool, scorer=ToyScorer(task), val=val)
    assert first == again and len(first) == 4 and len(set(first)) == 4
    assert policy.last_selection_info["chosen"] == loaded.last_selection_info["chosen"]
    info = loaded.last_selection_info
    assert len(info["steps"]) == 4 and not info["stopped"]
    assert all(len(s["q"]) == len(pool) + 1 for s in info["steps"])
    # each step scores the pool and val as queries under the current prompt
    assert info["lm_queries"] == 4 * (len(pool) + len(val)) == info["scorer_stats"]["queries"]


def test_file_holds_one_json_document(tmp_path, task):
    policy = _policy(task)
    path = policy.save(tmp_path / "p.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        names = sorted(f.keys())
    assert list(meta) == [METADATA_KEY]
    doc = json.loads(meta[METADATA_KEY])
    assert doc["format"] == FORMAT_NAME and doc["format_version"] == FORMAT_VERSION == 3 and doc["kind"] == "policy"
    assert doc["qnet"] == {"class": "CandidateQNet", "state_dim": 6, "cand_dim": 6, "hidden": [16, 8],
                           "n_parameters": sum(p.numel() for p in policy.qnet.parameters())}
    assert doc["feature_spec"]["kind"] == "active" and doc["task"]["name"] == "sst2"
    assert doc["scorer"] is None and doc["scorer_fingerprint"] == ToyScorer(task).fingerprint
    assert doc["training"] == {"agent": "dqn", "total_timesteps": 123, "seed": 0}
    assert doc["tensors_sha256"] == tensors_sha256(load_file(str(path)))
    assert doc["sha256"] == artifact_sha256(doc, doc["tensors_sha256"])
    assert names == sorted(policy.qnet.state_dict())
    assert doc == policy.describe()


def test_save_overwrites_atomically(tmp_path, task):
    path = tmp_path / "p.safetensors"
    _policy(task, seed=0).save(path)
    second = _policy(task, seed=1)
    second.save(path)
    assert SelectorPolicy.load(path).describe()["tensors_sha256"] == second.describe()["tensors_sha256"]
    assert sorted(os.listdir(tmp_path)) == ["p.safetensors"]


# --------------------------------------------------------------------------------------------- refusals


def test_refuses_missing_file(tmp_path):
    _refused(tmp_path / "nope.safetensors", "not found")


def test_refuses_truncated_file(tmp_path, task):
    path = _policy(task).save(tmp_path / "p.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _refused(path, "not a readable safetensors file")


def test_refuses_non_safetensors_file(tmp_path):
    path = tmp_path / "p.safetensors"
    path.write_bytes(b"\x80\x04\x95 this is a pickle, honest" * 4)
    _refused(path, "is a pickle file (a PyTorch checkpoint?), not a .safetensors file")
    path.write_bytes(b"\x00\x01 garbage" * 4)
    _refused(path, "not a readable safetensors file")


def test_refuses_missing_or_bad_metadata(tmp_path, task):
    weights = dict(_policy(task).qnet.state_dict())
    bare = tmp_path / "bare.safetensors"
    save_file(weights, str(bare))
    _refused(bare, METADATA_KEY, "metadata")
    garbled = tmp_path / "garbled.safetensors"
    save_file(weights, str(garbled), metadata={METADATA_KEY: "{not json"})
    _refused(garbled, "not valid JSON")


def test_refuses_flipped_tensor_byte(tmp_path, task):
    path = _policy(task).save(tmp_path / "p.safetensors")
    data = bytearray(path.read_bytes())
    pos = _data_start(path) + 37
    assert pos < len(data)
    data[pos] ^= 0x40
    path.write_bytes(bytes(data))
    _refused(path, "edited or corrupted", "tensors_sha256")


def test_refuses_unknown_format_and_newer_version(tmp_path, task):
    src = _policy(task).save(tmp_path / "p.safetensors")
    newer = tmp_path / "newer.safetensors"
    _rewrite_metadata(src, newer, lambda d: d.update(format_version=99))
    _refused(newer, "format_version 99", "expected 3", "upgrade rl_select")
    older = tmp_path / "older.safetensors"
    _rewrite_metadata(src, older, lambda d: d.update(format_version=1))
    _refused(older, "format_version 1", "re-export")
    agent = tmp_path / "agent.safetensors"
    _rewrite_metadata(src, agent, lambda d: d.update(kind="agent"))
    _refused(agent, "'agent' document", "expected 'policy'")
    other = tmp_path / "other.safetensors"
    _rewrite_metadata(src, other, lambda d: d.update(format="someone.else"))
    _refused(other, "'someone.else'", FORMAT_NAME)


# --------------------------------------------------------------------------------------------- whole-file integrity



def _sealed_policy(task, tmp_path: Path) -> Path:
    """A saved policy with a calibrated scorer spec and a training record (the fields the edits below touch)."""
    policy = _policy(task)
    policy.scorer_spec = ScorerSpec(model="bundled", dtype="fp32", mode="direct", calibrate=True,
                                    model_fingerprint="abc123")
    policy.training = {"agent": "dqn", "total_timesteps": 123, "note": "trained on sst2 seeds 0-2"}
    return policy.save(tmp_path / "sealed.safetensors")


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda d: d.update(k=2), id="k-4-to-2"),
        pytest.param(lambda d: d["scorer"].update(calibrate=False), id="scorer-calibrate-off"),
        pytest.param(lambda d: d["training"].update(note="trained on sst2 seeds 0-3"), id="training-one-char"),
        pytest.param(lambda d: d.update(allow_stop=True), id="allow-stop"),
        pytest.param(lambda d: d["task"].update(instruction="Classify it."), id="task-instruction"),
        pytest.param(lambda d: d.pop("sha256"), id="hash-removed"),
    ],
)
def test_a_validly_rewritten_edited_document_is_refused(tmp_path, task, edit):
    src = _sealed_policy(task, tmp_path)
    SelectorPolicy.load(src)  # untouched: loads
    edited = tmp_path / "edited.safetensors"
    _rewrite_metadata(src, edited, edit, reseal=False)  # safetensors' own writer, the old hashes kept
    msg = _refused(edited, "edited.safetensors", "was edited or corrupted", "sha256", "re-export")
    assert len(msg) < 200 + len(str(tmp_path)), msg


def test_a_flipped_byte_in_the_training_record_is_refused(tmp_path, task):
    path = _sealed_policy(task, tmp_path)
    data = path.read_bytes()
    header = data[:_data_start(path)]
    pos = header.index(b"seeds 0-2") + len(b"seeds 0-")
    path.write_bytes(data[:pos] + b"3" + data[pos + 1:])  # same length: still a valid safetensors file
    _refused(path, "sealed.safetensors", "was edited or corrupted")


def test_an_unedited_rewrite_loads_and_the_hash_ignores_key_order(tmp_path, task):
    src = _sealed_policy(task, tmp_path)
    same = tmp_path / "same.safetensors"
    _rewrite_metadata(src, same, lambda d: None, reseal=False)  # other key order, other whitespace
    assert SelectorPolicy.load(same).describe() == SelectorPolicy.load(src).describe()


def test_rewriting_through_the_writer_reseals(tmp_path, task):
    """Code that legitimately rewrites a stored policy (the ablation's probe critic) goes through save()."""
    from rl_select.mdp.critic import CRITIC_FEATURES, ProbeCritic

    path = _sealed_policy(task, tmp_path)
    policy = SelectorPolicy.load(path)
    policy.critic = ProbeCritic(np.arange(len(CRITIC_FEATURES) + 1, dtype=np.float64) / 10, n_train=3)
    policy.save(path)
    back = SelectorPolicy.load(path)
    assert back.critic is not None and back.critic.n_train == 3 and back.k == 4


def test_version_2_files_are_refused_their_metadata_had_no_hash(tmp_path, task):
    src = _sealed_policy(task, tmp_path)
    legacy = tmp_path / "legacy.safetensors"
    _rewrite_metadata(src, legacy, lambda d: (d.update(format_version=2), d.pop("sha256")), reseal=False)
    _refused(legacy, "format_version 2", "expected 3", "retrain or re-export it")
    downgraded = tmp_path / "downgraded.safetensors"  # an edited file relabelled as version 2: refused too
    _rewrite_metadata(src, downgraded, lambda d: (d.update(format_version=2, k=2), d.pop("sha256")), reseal=False)
    _refused(downgraded, "format_version 2")


def test_an_agent_checkpoint_is_sealed_too(tmp_path):
    from agents.base import load_agent, save_agent
    from rl_select.errors import ArtifactError

    path = save_agent(tmp_path / "agent.safetensors", agent="dqn", tensors={"w": torch.arange(4.0)},
                      doc={"config": {"gamma": 0.9}})
    tensors, doc = load_agent(path, agent="dqn")
    assert doc["config"] == {"gamma": 0.9} and torch.equal(tensors["w"], torch.arange(4.0))
    edited = tmp_path / "edited-agent.safetensors"
    _rewrite_metadata(path, edited, lambda d: d["config"].update(gamma=0.5), reseal=False)
    with pytest.raises(ArtifactError, match="agent file .*edited-agent.safetensors.* was edited or corrupted"):
        load_agent(edited, agent="dqn")


def test_refuses_architecture_that_does_not_match_tensors(tmp_path, task):
    src = _policy(task).save(tmp_path / "p.safetensors")
    wider = tmp_path / "wider.safetensors"
    _rewrite_metadata(src, wider, lambda d: d["qnet"].update(hidden=[32, 8]))  # hash still matches the tensors
    _refused(wider, "architecture", "hidden=[32, 8]")
    deeper = tmp_path / "deeper.safetensors"
    _rewrite_metadata(src, deeper, lambda d: d["qnet"].update(hidden=[16, 8, 8]))
    _refused(deeper, "architecture")
    relabelled = tmp_path / "labelled.safetensors"  # feature set swapped: dims no longer match
    _rewrite_metadata(src, relabelled, lambda d: d.update(feature_spec=FeatureSpec("labelled").to_dict()))
    _refused(relabelled, "do not match feature set 'labelled'")


def test_refuses_unexpected_feature_set(tmp_path, task):
    path = _policy(task).save(tmp_path / "p.safetensors")
    _refused(path, "feature set 'active'", "expected 'labelled'", expect_feature_set="labelled")


def test_scorer_spec_round_trips_and_is_compared_field_by_field(tmp_path, task):
    spec = ScorerSpec(model="bundled", dtype="fp32", mode="channel", calibrate=True, model_fingerprint="abc123")
    policy = _policy(task)
    policy.scorer_spec = spec
    loaded = SelectorPolicy.load(policy.save(tmp_path / "p.safetensors"))
    assert loaded.scorer_spec == spec

    class Built:  # a scorer as ScorerSpec.factory builds it: it carries its resolved spec
        fingerprint = "hf:abc123:channel:0"

        def __init__(self, s):
            self.scorer_spec = s

    assert loaded.scorer_differences(Built(spec)) == []
    assert loaded.scorer_differences(Built(spec.replace(batch_size=64))) == []  # not an identity field
    diff = loaded.scorer_differences(Built(spec.replace(calibrate=False, mode="direct")))
    assert diff == ["mode: 'channel' vs 'direct'", "calibrate: True vs False"]
    with pytest.raises(PolicyError, match="calibrate: True vs False") as info:
        loaded.check_scorer(Built(spec.replace(calibrate=False)))
    assert "\n" not in str(info.value) and "expected the training scorer (--calibrate)" in str(info.value)
    with pytest.raises(PolicyError, match=r"scorer \(--mode channel, --calibrate\), or force=True"):
        loaded.check_scorer(Built(spec.replace(calibrate=False, mode="direct")))
    with pytest.warns(PolicyWarning):
        assert loaded.check_scorer(Built(spec.replace(calibrate=False)), force=True) is False


def test_constructor_refuses_mismatched_qnet(task):
    torch.manual_seed(0)
    with pytest.raises(PolicyError, match="do not match feature set 'labelled'"):
        SelectorPolicy(CandidateQNet(6, 6, (4,)), feature_spec=FeatureSpec("labelled"), k=2, task=task,
                       scorer_spec=None, scorer_fingerprint="toy")
    with pytest.raises(PolicyError, match="min_len=3"):
        _policy(task, k=2, min_len=3)


# --------------------------------------------------------------------------------------------- selection


def _stop_dominates(policy: SelectorPolicy) -> SelectorPolicy:
    with torch.no_grad():
        policy.qnet.stop_mlp[-1].bias.fill_(1e6)
    return policy


def test_stop_ends_selection_early(task, pool, val):
    policy = _stop_dominates(_policy(task, allow_stop=True, min_len=0))
    assert policy.select(pool, scorer=ToyScorer(task), val=val) == []
    info = policy.last_selection_info
    assert info["stopped"] and info["chosen"] == [] and info["steps"][0]["action"] == "STOP"


def test_min_len_respected_before_stop(task, pool, val):
    policy = _stop_dominates(_policy(task, k=5, allow_stop=True, min_len=2))
    chosen = policy.select(pool, scorer=ToyScorer(task), val=val)
    assert len(chosen) == 2 and len(set(chosen)) == 2 and policy.last_selection_info["stopped"]
    # a smaller k at select time caps min_len
    assert len(policy.select(pool, scorer=ToyScorer(task), val=val, k=1)) == 1


def test_stop_masked_when_not_allowed(task, pool, val):
    policy = _stop_dominates(_policy(task, k=3, allow_stop=False))
    chosen = policy.select(pool, scorer=ToyScorer(task), val=val)
    assert len(chosen) == 3 and not policy.last_selection_info["stopped"]


def test_select_is_greedy_in_q(task, pool, val):
    policy = _policy(task, k=3)
    policy.select(pool, scorer=ToyScorer(task), val=val)
    info = policy.last_selection_info
    taken: list[int] = []
    for step in info["steps"]:
        q = np.array(step["q"][:-1])
        q[taken] = -np.inf
        assert step["action"] == int(np.argmax(q))
        taken.append(step["action"])
    assert taken == info["chosen"]


def test_k_larger_than_pool(task, pool, val):
    with pytest.raises(SelectionError, match=r"k=11 is larger than the pool of 10 candidates"):
        _policy(task).select(pool, scorer=ToyScorer(task), val=val, k=11)
    with pytest.raises(SelectionError, match="k=0"):
        _policy(task).select(pool, scorer=ToyScorer(task), val=val, k=0)


def test_other_scorer_is_refused_unless_forced(task, pool, val):
    policy = _policy(task, k=2)
    other = ToyScorer(task, hint=0.5)  # another "model"
    with pytest.raises(PolicyError, match="fingerprint: 'toy:sst2:1.5:1.0' vs 'toy:sst2:0.5:1.0'"):
        policy.select(pool, scorer=other, val=val)
    with pytest.warns(PolicyWarning, match="another scorer"):
        assert len(policy.select(pool, scorer=other, val=val, force=True)) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        policy.select(pool, scorer=ToyScorer(task), val=val)  # the training LM: no warning


# --------------------------------------------------------------------------------------------- prompts


def test_build_prompt(task, pool, val):
    policy = _policy(task, k=3)
    demos = policy.select(pool, scorer=ToyScorer(task), val=val)
    prompt = policy.build_prompt("a fun film with a great cast", demos)
    assert prompt.endswith("Review: a fun film with a great cast\nSentiment:")
    for d in demos:
        assert f"Review: {d.text}\nSentiment: {d.label}" in prompt
    assert policy.build_prompt(Example(text="a fun film with a great cast", label="negative"), demos) == prompt
    assert policy.build_prompt(("a fun film with a great cast",), demos) == prompt
    assert policy.build_prompt("plain", []) == "Review: plain\nSentiment:"
    with pytest.raises(SelectionError, match="not labels of task 'sst2'"):
        policy.build_prompt("x", [Example(text="y", label="neutral")])


def test_build_prompt_pair_task():
    rte = get_task("rte")
    policy = _policy(rte, k=1)
    demo = Example(text="A man sleeps.", text2="A person rests.", label=rte.labels[0])
    prompt = policy.build_prompt(("It rains.", "The street is wet."), [demo])
    assert "A man sleeps." in prompt and "A person rests." in prompt
    assert prompt.endswith("It rains.\nHypothesis: The street is wet.\nAnswer:")
    with pytest.raises(SelectionError, match="pair of inputs"):
        policy.build_prompt("only one text", [demo])


# --------------------------------------------------------------------------------------------- imports


def test_import_needs_no_rl_libraries():
    code = (
        "import rl_select.mdp.policy, sys; "
        "assert 'gymnasium' not in sys.modules and 'stable_baselines3' not in sys.modules, "
        "sorted(m for m in sys.modules if m.startswith(('gymnasium', 'stable_baselines3')))"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
