"""A learned vote over the answered candidate prompts (the answer stacker) against the verifier and the rules.

For each held-out task, a stacker (weights over :data:`STACK_FEATURES`) is fitted on the policy's
training tasks: their first ``--n-train`` training queries' four hand-written prompts, answered by the LM and
logged by :func:`collect_rules` (``--rules DIR``, files ``rules-<task>.jsonl``, scored when missing; the same
files as ``benchmarks/set_verifier.py collect``), with the neighbourhood
vote and the zero-shot answer. It reads no label of the held-out task. It then keeps one prompt per query among
the same answered candidates as the verify mode (a warm score cache answers them after ``rl-select per-query
evaluate``):

* ``stack``: over all five candidates (the Q-network's greedy rollout and the four hand-written orders);
* ``stack_verify``: over all five, each label's stacker score plus ``log(support + 0.05)``, where ``support`` is
  the verifier's ``P(correct)`` summed over the candidates giving that label (the verify mode's own aggregation);
* ``stack_rules``: over the four hand-written orders only (nothing from the Q-network);
* ``verify``: the policy's own verifier (the shipped mode);
* ``max_conf_rules``: the most confident of the four hand-written orders' answers (nothing learned);
* ``poe_vote_rules``: hand-written stacking: the label with the highest mean log-probability over the four
  hand-written prompts plus ``log(vote + 0.05)``, then its most confident prompt (nothing learned);
* ``oracle``: any of the five right (reads the gold label).

The stacker scores each *label* of a query from all its answered prompts together, plus the two label-free
signals the pool gives without a prompt: the neighbourhood's similarity vote and the LM's zero-shot answer. A
label's score is ``STACK_FEATURES @ w``, the same weights for every label, candidate and task (no label word, no
task id, any number of labels), fitted by softmax cross-entropy over labels. :func:`choose_by_label` then keeps,
among the labels some candidate answers, the best-scored one's most confident prompt: the prompt file records one
prompt per query, and the LM's answer under it is what is judged.

One row per (task, seed) goes to ``--out``; per-task means are printed. ``--l2`` is the stacker's penalty.

    python benchmarks/answer_stacker.py --rules RULES --config configs/per_query.json --run-dir RUN \\
        --split val --seeds 0,1,2 --out docs/per_query/answer_stacker_pool100_val.csv
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rl_select.experiments.per_query_compare import Answered, answered, compare_main
from rl_select.experiments.per_query_runs import PerQueryRun
from rl_select.lm.calibration import normalise
from rl_select.mdp.neighbour_orders import ORDERS
from rl_select.mdp.per_query_policy import PerQueryPolicy
from rl_select.mdp.per_query_table import vote_shares
from rl_select.mdp.per_query_verifier import choose, verifier_inputs
from rl_select.metrics import label_ids

STACK_FEATURES: tuple[str, ...] = (
    "mean_logprob", "answer_share", "confident_answer_share", "log_vote", "vote_top", "log_zero_shot",
    "zero_shot_top",
)
"""What the stacker reads of each label ``y`` of a query: the candidates' mean (calibrated, normalised)
log-probability of ``y``; the share of candidates answering ``y``; that share weighted by each answer's top
probability; ``log(vote(y) + VOTE_FLOOR)`` of the neighbourhood vote and whether ``y`` is the vote's top; the
zero-shot log-probability of ``y`` and whether ``y`` is the zero-shot top. Means over candidates make it
independent of ``C``. Shapes: ``C`` candidates, ``Q`` queries, ``L`` labels, ``F = len(STACK_FEATURES)``."""

VOTE_FLOOR = 0.05
"""Added to the vote's shares before the log: a label no neighbour carries is unlikely, not impossible."""


def label_features(logprobs: np.ndarray, vote: np.ndarray, zero_shot: np.ndarray) -> np.ndarray:
    """:data:`STACK_FEATURES` of every label of every query.

    Args:
        logprobs: ``(C, Q, L)`` each candidate prompt's label log-probs (calibrated if the scorer is; normalised
            here).
        vote: ``(Q, L)`` the neighbourhood vote's label shares.
        zero_shot: ``(Q, L)`` the LM's zero-shot label probabilities (normalised here).

    Returns:
        ``float32 (Q, L, F)``.
    """
    lp = np.asarray(logprobs, dtype=np.float64)
    if lp.ndim != 3 or lp.shape[0] < 1 or np.shape(vote) != lp.shape[1:] or np.shape(zero_shot) != lp.shape[1:]:
        raise ValueError(f"logprobs {lp.shape}, vote {np.shape(vote)}, zero_shot {np.shape(zero_shot)}; expected "
                         "(C, Q, L) with C >= 1, (Q, L) and (Q, L)")
    lp = normalise(lp)
    p = np.exp(lp)
    eye = np.eye(lp.shape[-1])
    answered_ = eye[p.argmax(-1)]                                    # (C, Q, L)
    zs = np.clip(np.asarray(zero_shot, dtype=np.float64), 1e-12, None)
    zs = zs / zs.sum(-1, keepdims=True)
    vote = np.asarray(vote, dtype=np.float64)
    cols = [lp.mean(0), answered_.mean(0), (answered_ * p.max(-1, keepdims=True)).mean(0),
            np.log(vote + VOTE_FLOOR), eye[vote.argmax(-1)], np.log(np.clip(zs, 1e-6, None)), eye[zs.argmax(-1)]]
    return np.stack(cols, axis=-1).astype(np.float32)


def choose_by_label(scores: np.ndarray, logprobs: np.ndarray) -> np.ndarray:
    """One candidate per query: the best-scored label that some candidate answers, then its most confident one.

    Args:
        scores: ``(Q, L)`` label scores.
        logprobs: ``(C, Q, L)`` the candidates' answers.

    Returns:
        ``int64 (Q,)`` the kept candidate of each query (ties: the first).
    """
    p = np.exp(normalise(np.asarray(logprobs, dtype=np.float64)))
    answers, conf = p.argmax(-1), p.max(-1)                          # (C, Q)
    given = np.zeros(scores.shape, dtype=bool)
    for c in range(answers.shape[0]):
        given[np.arange(answers.shape[1]), answers[c]] = True
    best = np.where(given, scores, -np.inf).argmax(-1)
    return np.where(answers == best[None], conf, -np.inf).argmax(0).astype(np.int64)


def fit_stacker(features: Sequence[np.ndarray], golds: Sequence[np.ndarray], *, l2: float = 1e-3,
                max_iter: int = 200) -> tuple[np.ndarray, dict[str, Any]]:
    """The weights ``float64 (F,)`` minimising the mean per-task softmax cross-entropy plus ``l2 * |w|^2``
    (L-BFGS), and a summary (rows per task, ``l2``, final loss, the named weights).

    Args:
        features: One ``(Q_t, L_t, F)`` array per training task (:func:`label_features`).
        golds: Their gold label ids, ``int (Q_t,)``.

    Raises:
        ValueError: No task, or a task whose features and golds disagree in length.
    """
    if not features or len(features) != len(golds) or any(len(x) != len(y) or len(x) == 0
                                                           for x, y in zip(features, golds)):
        raise ValueError(f"{len(features)} feature arrays for {len(golds)} gold arrays; expected one non-empty pair "
                         "per training task")
    w = torch.zeros(len(STACK_FEATURES), requires_grad=True)
    xs = [torch.as_tensor(np.asarray(x, dtype=np.float32)) for x in features]
    ys = [torch.as_tensor(np.asarray(y, dtype=np.int64)) for y in golds]
    opt = torch.optim.LBFGS([w], max_iter=max_iter, line_search_fn="strong_wolfe")

    def loss_fn() -> torch.Tensor:
        return sum(nn.functional.cross_entropy(x @ w, y) for x, y in zip(xs, ys)) / len(xs) + l2 * (w ** 2).sum()

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    opt.step(closure)
    weights = w.detach().numpy().astype(np.float64)
    with torch.no_grad():
        final = float(loss_fn())
    return weights, {"rows": [len(x) for x in features], "l2": l2, "train_loss": round(final, 4),
                     "weights": {n: round(float(v), 4) for n, v in zip(STACK_FEATURES, weights)}}


SETTINGS: dict[str, object] = {"rules": None, "l2": 1e-3, "n_train": 300}
_TRAIN: dict[str, tuple[np.ndarray, np.ndarray]] = {}
_STACKERS: dict[str, np.ndarray] = {}


def collect_rules(run: PerQueryRun, name: str, n: int, out: Path) -> Path:
    """Score the four hand-written orders' prompts for the first ``n`` training queries of task ``name`` (cached LM
    rows) and log them to ``out/rules-<name>.jsonl``, one JSON line per prompt (query uid, order, rule name,
    label log-probs); a file already there is kept. Prints the prompts, the LM rows and the time."""
    path = out / f"rules-{name}.jsonl"
    if path.is_file():
        return path
    t0 = time.time()
    table, ctx = run.training_contexts(name)
    scorer = run.scorer(name)
    before = scorer.stats.copy()
    rows = [i for i in range(min(n, len(ctx.queries))) for _ in ORDERS]
    names = [nm for _ in range(len(rows) // len(ORDERS)) for nm in ORDERS]
    orders = [ORDERS[nm](table, ctx, i, run.cfg.k) for i, nm in zip(rows, names)]
    lp = scorer.logprobs_many(demo_lists=[ctx.demos(table, i, o) for i, o in zip(rows, orders)],
                              queries=[ctx.queries[i] for i in rows])
    spent = scorer.stats - before
    out.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for i, o, nm, row in zip(rows, orders, names, lp):
            f.write(json.dumps({"query": ctx.queries[i].uid, "order": list(map(int, o)), "policy": nm,
                                "logprobs": [float(x) for x in row]}) + "\n")
    print(f"{name}: {len(rows)} prompts, {int(spent.queries)} LM rows ({int(spent.cache_misses)} computed) "
          f"in {time.time() - t0:.0f} s", flush=True)
    return path


def training_task(run: PerQueryRun, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(features (Q, L, F), gold (Q,))`` of a training task's queries with logged rule-prompt answers."""
    if name not in _TRAIN:
        table, ctx = run.training_contexts(name)
        index = {q.uid: j for j, q in enumerate(ctx.queries)}
        lp: dict[tuple[int, str], list[float]] = {}
        path = collect_rules(run, name, int(SETTINGS["n_train"]), Path(str(SETTINGS["rules"])))  # type: ignore[call-overload]
        with path.open(encoding="utf-8") as f:
            for line in f:
                e = json.loads(line)
                lp[(index[e["query"]], e["policy"])] = e["logprobs"]
        qs = sorted({i for i, _ in lp})
        logprobs = np.array([[lp[(i, n)] for i in qs] for n in ORDERS])
        vote = np.stack([vote_shares(table, ctx, i) for i in qs])
        zs = np.stack([ctx.zs[i] for i in qs])
        gold = label_ids(run.task(name)[0].labels, ctx.queries)[qs]
        _TRAIN[name] = (label_features(logprobs, vote, zs), gold)
    return _TRAIN[name]


def signals(ans: Answered) -> tuple[np.ndarray, np.ndarray]:
    """``(vote (Q, L), zero-shot (Q, L))`` of the answered queries."""
    n_q = ans.shape[1]
    return (np.stack([vote_shares(ans.table, ans.ctx, i) for i in range(n_q)]),
            np.stack([ans.ctx.zs[i] for i in range(n_q)]))


def compare(run: PerQueryRun, target: str, seed: int, split: str, policy: PerQueryPolicy) -> dict[str, object]:
    """Accuracy of each way of keeping one answered prompt per query, for one task and seed."""
    if target not in _STACKERS:
        tasks = list(policy.training["tasks"])
        data = [training_task(run, t) for t in tasks]
        _STACKERS[target], summary = fit_stacker([d[0] for d in data], [d[1] for d in data],
                                                 l2=float(SETTINGS["l2"]))  # type: ignore[arg-type]
        print(f"{target}: stacker {summary}", flush=True)
    stacker = _STACKERS[target]
    ans = answered(run, target, seed, split, policy)
    n_c, n_q, n_l = ans.shape
    lp = ans.logprobs.reshape(n_c, n_q, n_l)
    right, cols = lp.argmax(-1) == ans.gold[None], np.arange(n_q)
    vote, zs = signals(ans)
    x, answers = verifier_inputs(policy.view, ans.table, ans.ctx, ans.orders, ans.logprobs, policy.k, rows=ans.rows)
    assert policy.verifier is not None
    p_correct, answers = policy.verifier.p_correct(x).reshape(n_c, n_q), answers.reshape(n_c, n_q)
    kept_verify = choose(p_correct, answers, n_l)
    support = np.zeros((n_q, n_l))                      # the verify mode's P(correct) summed per answer
    for c in range(n_c):
        np.add.at(support, (cols, answers[c]), p_correct[c])
    stacked = label_features(lp, vote, zs) @ stacker
    rules = lp[1:]
    poe = normalise(rules).mean(0) + np.log(vote + VOTE_FLOOR)
    return {"stack": right[choose_by_label(stacked, lp), cols].mean(),
            "stack_verify": right[choose_by_label(stacked + np.log(support + VOTE_FLOOR), lp), cols].mean(),
            "stack_rules": right[1 + choose_by_label(label_features(rules, vote, zs) @ stacker, rules),
                                 cols].mean(),
            "verify": right[kept_verify, cols].mean(),
            "max_conf_rules": right[1 + ans.confidence()[1:].argmax(0), cols].mean(),
            "poe_vote_rules": right[1 + choose_by_label(poe, rules), cols].mean(),
            "oracle": right.any(0).mean()}


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--rules", required=True, help="the folder of rules-<task>.jsonl (collected when missing)")
    ap.add_argument("--n-train", type=int, default=300, help="training queries per task whose rule prompts are scored")
    ap.add_argument("--l2", type=float, default=1e-3, help="the stacker's weight penalty")
    known, rest = ap.parse_known_args(argv)
    SETTINGS.update(rules=known.rules, l2=known.l2, n_train=known.n_train)
    compare_main(rest, __doc__.splitlines()[0], compare)


if __name__ == "__main__":
    main()
