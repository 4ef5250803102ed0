"""Θ's pruning between Agora rounds: two readings of the author's "remove the sets belonging to the longest common
sequence, rooted at the first element" (docs/agora.md, "Pruning"), and the round counts each gives on a grid.

A set is a (name, setting, score) triple; its *sequence* is its setting's values in the grid file's key order, so
"rooted at the first element" means a common prefix. Both rules sort by score (best first; failed trials, score
None, last; ties by name), remove at least one set per round, and remove a single remaining set (Θ empty: stop).

- `prefix`: find the longest common prefix that any two sets share; of each group of sets sharing such a prefix,
  keep only the best. Independent of the scores how many go: a full grid of K keys lasts K + 1 rounds.
- `best`: find the longest common prefix that any set shares with the best set; remove every other set sharing
  it with the best (the best stays). How many go depends on which set is best.
"""
import numpy as np

PRUNE_RULES = ("prefix", "best")


def common_prefix(a, b):
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def ranked(scored):
    return sorted(scored, key=lambda t: (t[2] is None, -(t[2] if t[2] is not None else 0.0), t[0]))


def sequence(setting):
    return tuple(str(v) for v in setting.values())


def prune(scored, rule="prefix"):
    """Θ_{k+1} from Θ_k's [(name, setting, score)] by `rule` (PRUNE_RULES), best first."""
    order = ranked(scored)
    if len(order) <= 1:
        return []
    values = [sequence(setting) for _, setting, _ in order]
    if rule == "best":
        shared = [common_prefix(values[0], v) for v in values[1:]]
        longest = max(shared)
        return [order[0]] + [item for item, n in zip(order[1:], shared) if n != longest]
    longest = max(common_prefix(values[i], values[j]) for i in range(len(values)) for j in range(i + 1, len(values)))
    groups = {}
    for item, seq in zip(order, values):
        groups.setdefault(seq[:longest], []).append(item)
    keep = {group[0][0] for group in groups.values()}
    return [item for item in order if item[0] in keep]


def round_counts(settings, rule, scores):
    """(rounds, fine-tuning runs) of pruning `settings` ([(name, setting)]) to nothing by `rule`, each round's
    scores given by `scores(round, names) -> [score]`."""
    theta, rounds, runs = list(settings), 0, 0
    while theta:
        rounds += 1
        runs += len(theta)
        names = [name for name, _ in theta]
        theta = [(n, s) for n, s, _ in prune(list(zip(names, [s for _, s in theta], scores(rounds, names))), rule)]
    return rounds, runs


def round_count_summary(settings, seeds=20):
    """{rule: {...}}: the rounds and runs of each rule on `settings` when one set stays best throughout ("stable":
    a fixed ranking) and with fresh random scores every round (min / mean / max over `seeds` seeds)."""
    stable = {name: i for i, (name, _) in enumerate(sorted(settings))}
    out = {}
    for rule in PRUNE_RULES:
        fixed = round_counts(settings, rule, lambda k, names: [-stable[n] for n in names])
        drawn = []
        for seed in range(seeds):
            rng = np.random.RandomState(seed)
            drawn.append(round_counts(settings, rule, lambda k, names: rng.uniform(size=len(names)).tolist()))
        rounds = [r for r, _ in drawn]
        runs = [n for _, n in drawn]
        out[rule] = {"stable": {"rounds": fixed[0], "runs": fixed[1]},
                     "random": {"rounds_min": min(rounds), "rounds_mean": float(np.mean(rounds)),
                                "rounds_max": max(rounds), "runs_mean": float(np.mean(runs)), "seeds": seeds}}
    return out
