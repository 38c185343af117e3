"""Per-query rollouts: collected in batches through the scorer into a resumable store, then learned offline.

A per-query episode costs one LM row (the query under its final prompt; calibrated scorers add the
prompt's content-free rows), so thousands are affordable. Collection never steps an env one query at a
time: a batch of episodes draws its behaviour actions under the shared
:class:`~rl_select.mdp.episode.EpisodeRule` (no LM needed until the prompt is complete), then scores all
the final prompts in ONE :meth:`~rl_select.lm.base.CachedScorer.logprobs_many` call.

The store keeps what the LM said, not features: per episode the query's uid, the candidate positions in
prompt order and the final prompt's label log-probs. Features are recomputed from the pool table at
training time, so a feature-set or reward ablation costs no LM row.

Behaviour policies (:data:`BEHAVIOURS`), used in turn, one block of ``Q`` episodes each: ``random``
(uniform over legal actions); ``knn_perturbed`` (kNN's order, least similar first, with each slot swapped
for a random neighbour with probability 1/2); ``one_label`` (the nearest neighbours carrying one label:
the neighbourhood vote's top label half the time, else a label drawn from the neighbours' labels; each
slot swapped for a random neighbour with probability 1/4), so the logged prompts cover pushing each label.
A run of ``2 Q`` episodes draws the first two only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from agents.offline import OfflineCQLAgent
from agents.rollout_store import Episode
from rl_select.errors import ConfigError, DataError
from rl_select.lm.base import CachedScorer
from rl_select.mdp.episode import EpisodeRule
from rl_select.mdp.per_query import FeatureView, reward_of
from rl_select.mdp.per_query_stacker import AnswerStacker
from rl_select.mdp.per_query_table import PoolTable, QueryContexts, vote_shares
from rl_select.mdp.per_query_verifier import Verifier, verifier_inputs
from rl_select.mdp.qnet import CandidateQNet
from rl_select.metrics import label_ids

BEHAVIOURS: tuple[str, ...] = ("random", "knn_perturbed", "one_label")
"""Behaviour policies of :func:`collect_per_query`, used in turn."""


@dataclass(frozen=True)
class LoggedEpisode:
    """One logged per-query episode.

    Attributes:
        query: The query's uid.
        order: Candidate positions (into the query's ``M`` neighbours) in prompt order.
        logprobs: The final prompt's label log-probs for the query, ``(L,)`` (calibrated if the scorer is).
        policy: The behaviour policy's name.
    """

    query: str
    order: tuple[int, ...]
    logprobs: tuple[float, ...]
    policy: str


class PerQueryStore:
    """Logged per-query episodes, one JSON line each, plus a ``.meta.json`` of the settings they came from.

    Appends are flushed and fsynced per batch; a torn last line (killed mid-write) is dropped on read, so a
    collection resumes where it stopped.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def meta_path(self) -> Path:
        """Where the settings are kept."""
        return self.path.with_suffix(".meta.json")

    def load(self) -> list[LoggedEpisode]:
        """Every complete episode, in order."""
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                d = json.loads(line)
            except ValueError:
                break  # a torn last line
            out.append(LoggedEpisode(d["query"], tuple(d["order"]), tuple(d["logprobs"]), d["policy"]))
        return out

    def __len__(self) -> int:
        return len(self.load())

    def check_meta(self, meta: dict[str, Any]) -> None:
        """Write ``meta`` for a new store; refuse to extend a store collected with other settings (one line)."""
        if self.meta_path.is_file():
            old = json.loads(self.meta_path.read_text(encoding="utf-8"))
            diff = sorted(k for k in set(old) | set(meta) if old.get(k) != meta.get(k))
            if diff:
                raise DataError(f"rollout store {str(self.path)!r} was collected with other settings ({diff}); "
                                "expected the same settings or a new store path")
            return
        self.meta_path.parent.mkdir(parents=True, exist_ok=True)
        self.meta_path.write_text(json.dumps(meta, sort_keys=True, indent=1), encoding="utf-8")

    def append(self, episodes: Sequence[LoggedEpisode]) -> None:
        """Append episodes durably (rewrite a torn tail first)."""
        done = self.load()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_file() and len(self.path.read_text(encoding="utf-8").splitlines()) != len(done):
            self.path.write_text("".join(_line(e) for e in done), encoding="utf-8")
        with self.path.open("a", encoding="utf-8") as f:
            f.write("".join(_line(e) for e in episodes))
            f.flush()
            os.fsync(f.fileno())


def _line(e: LoggedEpisode) -> str:
    return json.dumps({"query": e.query, "order": list(e.order), "logprobs": [round(x, 6) for x in e.logprobs],
                       "policy": e.policy}, separators=(",", ":")) + "\n"


def behaviour_order(policy: str, m: int, k: int, rng: np.random.Generator, *,
                    labels: np.ndarray | None = None, vote_top: int | None = None) -> list[int]:
    """One behaviour episode's candidate positions in prompt order (each step legal under the episode rule).

    Args:
        labels: ``int (M,)`` the neighbours' label ids (``one_label`` only).
        vote_top: The neighbourhood vote's top label id (``one_label`` only).

    Raises:
        ConfigError: An unknown behaviour policy, or ``one_label`` without ``labels`` and ``vote_top``.
    """
    rule = EpisodeRule(n_candidates=m, k=k)
    if policy == "random":
        chosen: list[int] = []
        done = False
        while not done:
            legal = np.flatnonzero(rule.mask(chosen))
            _, chosen, done = rule.apply(np.int64(rng.choice(legal)), chosen, done)
        return chosen
    if policy == "knn_perturbed":
        slots = list(range(k))[::-1]  # kNN: least similar first, the nearest last
        for s in range(k):
            if rng.random() < 0.5:
                free = [j for j in range(m) if j not in slots]
                if free:
                    slots[s] = int(rng.choice(free))
        return slots
    if policy == "one_label":
        if labels is None or vote_top is None:
            raise ConfigError("behaviour 'one_label' needs the neighbours' labels and the vote's top label")
        target = vote_top if rng.random() < 0.5 else int(rng.choice(labels))
        same = [j for j in range(m) if labels[j] == target]
        picked = (same + [j for j in range(m) if labels[j] != target])[:k]
        for s in range(len(picked)):
            if rng.random() < 0.25:
                free = [j for j in range(m) if j not in picked]
                if free:
                    picked[s] = int(rng.choice(free))
        return sorted(picked, reverse=True)  # the nearest last
    raise ConfigError(f"unknown behaviour policy {policy!r}; expected one of {list(BEHAVIOURS)}")


def collect_per_query(scorer: CachedScorer, table: PoolTable, ctx: QueryContexts, store: PerQueryStore, *,
                      n_episodes: int, k: int, seed: int, batch: int = 200, progress: bool = False) -> int:
    """Collect up to ``n_episodes`` episodes into ``store`` (resuming it), ``batch`` prompts per scorer call.

    Episode ``j`` is query ``j mod Q`` under behaviour ``BEHAVIOURS[(j // Q) mod len(BEHAVIOURS)]``, its actions
    from the generator seeded ``(seed, j)``: a resumed store continues exactly where a killed run stopped.

    Returns:
        Episodes added.
    """
    if not ctx.queries:
        raise DataError("no queries to collect per-query episodes on; expected at least one")
    start = len(store)
    added = 0
    bar = tqdm(total=n_episodes, initial=start, desc=f"per-query episodes ({scorer.spec.name})", disable=not progress)
    for lo in range(start, n_episodes, batch):
        ids = range(lo, min(n_episodes, lo + batch))
        rows, orders, policies = [], [], []
        for j in ids:
            policy = BEHAVIOURS[(j // len(ctx.queries)) % len(BEHAVIOURS)]
            rows.append(j % len(ctx.queries))
            i = j % len(ctx.queries)
            orders.append(behaviour_order(policy, ctx.m, k, np.random.default_rng([seed, j]),
                                          labels=table.labels[ctx.nbr[i]],
                                          vote_top=int(np.argmax(vote_shares(table, ctx, i)))))
            policies.append(policy)
        lp = scorer.logprobs_many(demo_lists=[ctx.demos(table, i, o) for i, o in zip(rows, orders)],
                                  queries=[ctx.queries[i] for i in rows])
        store.append([LoggedEpisode(ctx.queries[i].uid, tuple(o), tuple(float(x) for x in row), p)
                      for i, o, row, p in zip(rows, orders, lp, policies)])
        added += len(rows)
        bar.update(len(rows))
    bar.close()
    return added


def query_rows(logged: Sequence[LoggedEpisode], ctx: QueryContexts) -> list[int]:
    """Each logged episode's query as an index into ``ctx.queries``.

    Raises:
        DataError: A logged query that is not among ``ctx.queries``.
    """
    index = {q.uid: i for i, q in enumerate(ctx.queries)}
    missing = [e.query for e in logged if e.query not in index]
    if missing:
        raise DataError(f"{len(missing)} logged queries (first {missing[0]!r}) are not among the task's queries; "
                        "expected the store's own task and seed")
    return [index[e.query] for e in logged]


def to_episodes(logged: Sequence[LoggedEpisode], table: PoolTable, ctx: QueryContexts, view: FeatureView, *,
                k: int, reward: str, labels: Sequence[str]) -> list[Episode]:
    """Logged episodes as :class:`~agents.rollout_store.Episode` with ``view``'s features and the terminal ``reward``.

    Raises:
        DataError: A logged query that is not among ``ctx.queries``.
    """
    gold = label_ids(labels, ctx.queries)
    rule = EpisodeRule(n_candidates=ctx.m, k=k)
    rows = query_rows(logged, ctx)
    rewards = reward_of(np.array([e.logprobs for e in logged]), gold[rows], reward)
    out = []
    for n, (e, i, r) in enumerate(zip(logged, rows, rewards)):
        states, cands, masks = [], [], []
        for t in range(len(e.order) + 1):
            s, c = view(table, ctx, i, e.order[:t], k)
            states.append(s)
            cands.append(c)
            masks.append(rule.mask(e.order[:t], done=t == len(e.order)))
        out.append(Episode(episode=n, seed=[0, n], env_seed=0, policy=e.policy, actions=list(e.order),
                           rewards=[0.0] * (len(e.order) - 1) + [float(r)], states=np.stack(states),
                           candidates=np.stack(cands), masks=np.stack(masks), chosen=list(e.order)))
    return out


def train_per_query(episodes: Sequence[Episode], *, seed: int, steps: int = 3000, hidden: Sequence[int] = (64, 64),
                    cql_alpha: float = 0.1, target: str = "td", progress: bool = False) -> tuple[CandidateQNet,
                                                                                              dict[str, Any]]:
    """Offline CQL-DQN (:class:`~agents.offline.OfflineCQLAgent`) on per-query episodes.

    Returns:
        ``(qnet, summary)``: the best checkpoint by held-out TD loss and the agent's training summary.
    """
    agent = OfflineCQLAgent(hidden=hidden, gradient_steps=steps, seed=seed, cql_alpha=cql_alpha, target=target,
                            batch_size=256, eval_interval=max(1, steps // 8), target_update_interval=200)
    agent.learn(list(episodes))
    assert agent.qnet is not None
    return agent.qnet, {**agent.summary, "agent": "offline", "config": agent.config()}


def verifier_data(logged: Sequence[LoggedEpisode], table: PoolTable, ctx: QueryContexts, view: FeatureView, *,
                  k: int, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The verifier's training rows from logged episodes: each final prompt's inputs and whether its answer was right.

    Returns:
        ``(float32 (n, D), float32 (n,))`` (see :func:`~rl_select.mdp.per_query_verifier.verifier_inputs`).

    Raises:
        DataError: A logged query that is not among ``ctx.queries``.
    """
    rows = query_rows(logged, ctx)
    x, answers = verifier_inputs(view, table, ctx, [e.order for e in logged], np.array([e.logprobs for e in logged]),
                                 k, rows=rows)
    gold = label_ids(labels, ctx.queries)[rows]
    return x, (answers == gold).astype(np.float32)


def train_verifier(x: np.ndarray, y: np.ndarray, *, seed: int = 0, steps: int = 3000, hidden: Sequence[int] = (64, 64),
                   members: int = 3, batch: int = 256, lr: float = 1e-3) -> tuple[Verifier, dict[str, Any]]:
    """Fit a :class:`~rl_select.mdp.per_query_verifier.Verifier` (``members`` MLPs, seeds ``seed..``) by
    binary cross-entropy on ``(x (n, D), y (n,))``, Adam with weight decay 1e-4.

    Returns:
        ``(verifier, summary)``: the summary holds the row count, the share right and the final training loss.

    Raises:
        DataError: No rows, or rows and targets of different lengths.
    """
    if len(x) == 0 or len(x) != len(y):
        raise DataError(f"{len(x)} verifier rows for {len(y)} targets; expected the same positive number")
    torch.manual_seed(seed)  # the members' initial weights
    ver = Verifier(int(x.shape[1]), tuple(hidden), members)
    xt, yt = torch.as_tensor(np.asarray(x, dtype=np.float32)), torch.as_tensor(np.asarray(y, dtype=np.float32))
    ver.mean.copy_(xt.mean(dim=0))
    ver.scale.copy_(xt.std(dim=0) + 1e-6)
    z = (xt - ver.mean) / ver.scale
    losses = []
    for n, net in enumerate(ver.nets):
        torch.manual_seed(seed + n)
        opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-4)
        gen = torch.Generator().manual_seed(seed + n)
        for _ in range(steps):
            idx = torch.randint(0, len(z), (batch,), generator=gen)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(z[idx]).squeeze(-1), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            losses.append(float(torch.nn.functional.binary_cross_entropy_with_logits(net(z).squeeze(-1), yt)))
    ver.eval()
    return ver, {"rows": len(x), "share_right": round(float(np.mean(y)), 4), "steps": steps, "members": members,
                 "hidden": list(hidden), "seed": seed, "train_loss": round(float(np.mean(losses)), 4)}


def train_stacker(features: Sequence[np.ndarray], golds: Sequence[np.ndarray], *, l2: float = 1e-3,
                  max_iter: int = 200) -> tuple[AnswerStacker, dict[str, Any]]:
    """Fit an :class:`~rl_select.mdp.per_query_stacker.AnswerStacker` by L-BFGS (from zero weights, so
    deterministic) on the mean per-task softmax cross-entropy over labels plus ``l2 * |w|^2``.

    Args:
        features: One ``(Q_t, L_t, F)`` array per training task
            (:func:`~rl_select.mdp.per_query_stacker.label_features`).
        golds: Their gold label ids, ``int (Q_t,)``.

    Returns:
        ``(stacker, summary)``: the summary holds the rows per task, ``l2``, the final loss and the named weights.

    Raises:
        DataError: No task, or a task whose features and golds are empty or disagree in length.
    """
    if not features or len(features) != len(golds) or any(len(x) != len(y) or len(x) == 0
                                                           for x, y in zip(features, golds)):
        raise DataError(f"{len(features)} stacker feature arrays for {len(golds)} gold arrays; expected one "
                        "non-empty pair per training task")
    w = torch.zeros(features[0].shape[-1], requires_grad=True)
    xs = [torch.as_tensor(np.asarray(x, dtype=np.float32)) for x in features]
    ys = [torch.as_tensor(np.asarray(y, dtype=np.int64)) for y in golds]
    opt = torch.optim.LBFGS([w], max_iter=max_iter, line_search_fn="strong_wolfe")

    def loss_fn() -> torch.Tensor:
        ce = sum(torch.nn.functional.cross_entropy(x @ w, y) for x, y in zip(xs, ys)) / len(xs)
        return ce + l2 * (w ** 2).sum()

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        final = float(loss_fn())
    stacker = AnswerStacker(w.detach().numpy())
    return stacker, {"rows": [len(x) for x in features], "l2": l2, "train_loss": round(final, 4),
                     "weights": stacker.named_weights()}
