"""The sweep's plot: the metric against each swept number (τ, δ, s*, lr, ...), finished trials
filled, early-stopped ones hollow at their last quick score; realised sparsity against s*."""
import io

from maskunet_platform.tune.results import COMPLETED, SweepOutcome

TARGET = "mask.target_sparsity"


def sweep_plot_png(outcome: SweepOutcome) -> bytes:
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt

    keys = sorted({k for t in outcome.trials for k, v in t.config.items() if isinstance(v, (int, float))})
    panels = [*keys, "sparsity"] if TARGET in keys else keys
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(3.6 * max(1, len(panels)), 3.2), squeeze=False)
    for ax, key in zip(axes[0], panels):
        if key == "sparsity":
            points = [(t.config[TARGET], t.sparsity) for t in outcome.trials if t.sparsity is not None]
            if points:
                ax.scatter(*zip(*points), color="tab:purple")
            ax.set(xlabel="target sparsity s*", ylabel="realised sparsity")
            continue
        done = [(t.config[key], t.metric) for t in outcome.trials if key in t.config and t.status == COMPLETED]
        early = [(t.config[key], t.quick) for t in outcome.trials
                 if key in t.config and t.status != COMPLETED and t.quick is not None]
        if done:
            ax.scatter(*zip(*done), color="tab:blue", label=outcome.metric)
        if early:
            ax.scatter(*zip(*early), facecolors="none", edgecolors="tab:red", label="stopped early (quick score)")
        ax.set(xlabel=key, ylabel=outcome.metric)
        if key in ("mask.tau", "train.lr"):
            ax.set_xscale("log")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()
