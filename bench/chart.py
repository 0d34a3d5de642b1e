"""Draw bench/results/latest.json as a bar chart: how many times better friendlyhello is."""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(source, target):
    with open(source) as data:
        results = json.load(data)
    rows = [row for row in results["rows"] if row["target"] is not None]
    # "times better": a ratio where higher wins, or its inverse where lower wins
    better = [row["ratio"] if row["better"] == "higher" else 1 / row["ratio"] for row in rows]
    goals = [row["target"] if row["better"] == "higher" else 1 / row["target"] for row in rows]
    labels = [row["figure"] for row in rows]
    fig, ax = plt.subplots(figsize=(8, 0.55 * len(rows) + 1.4), dpi=110)
    y = range(len(rows))
    colors = ["#2e7d32" if b >= g else "#c62828" for b, g in zip(better, goals, strict=True)]
    ax.barh(list(y), [b - 1 for b in better], left=1, color=colors)  # from 1x: even, either way
    ax.scatter(goals, list(y), marker="|", s=400, color="black", label="target", zorder=3)
    for i, value in enumerate(better):
        ax.text(value, i, f" {value:.1f}x", va="center", fontsize=8)
    ax.set_yticks(list(y), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1, color="grey", linewidth=0.8)
    ax.set_xlim(0.5, max(better + goals) * 1.6)
    ax.set_xlabel("times better than the peer, as named (log scale; green: target met)", fontsize=8)
    where = results["machine"]
    ax.set_title(f"friendlyhello vs the tutorial's original stack\n{where['cores']} cores, "
                 f"Python {where['python']}, {where['date']}", fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(target)


if __name__ == "__main__":
    main(*sys.argv[1:])
