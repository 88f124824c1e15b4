"""Rule-based rewards for PPO (``reward_fn=ferrotune.train.rewards:NAME``).

A reward function takes the batch's ``queries`` (prompt texts), ``responses`` (decoded answers)
and ``references`` (the answers ``prep ppo`` kept, or None) and returns one float per answer.
"""

from __future__ import annotations

from collections import Counter


def reference_overlap(queries: list[str], responses: list[str], references: list) -> list[float]:
    """Character-bag F1 between each answer and its reference (0 without a reference).

    Characters rather than words, so Chinese answers (no spaces) are scored as well.
    """
    scores = []
    for response, reference in zip(responses, references, strict=True):
        if not reference or not response:
            scores.append(0.0)
            continue
        common = sum((Counter(response) & Counter(reference)).values())
        if common == 0:
            scores.append(0.0)
            continue
        precision, recall = common / len(response), common / len(reference)
        scores.append(2 * precision * recall / (precision + recall))
    return scores
