"""t-SNE plot of fused test representations coloured by class (the paper's Fig. 4)."""

import numpy as np


def plot_tsne(
    features, classes, class_names, path, seed=0, title="t-SNE of fused test representations"
):
    """features (N, f), classes (N,) ints indexing class_names; writes a PNG to path."""
    if len(features) < 3:  # before the slow imports
        raise ValueError(f"features: t-SNE needs at least 3 samples, got {len(features)}")
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    features, classes = np.asarray(features, dtype=np.float64), np.asarray(classes)
    perplexity = min(30.0, (len(features) - 1) / 3.0)  # sklearn requires perplexity < n_samples
    points = TSNE(
        n_components=2, perplexity=perplexity, init="pca", random_state=seed
    ).fit_transform(features)
    fig, ax = plt.subplots(figsize=(5, 5))
    markers = ["x", "o", "^", "s", "v", "D", "P", "*"]
    for c in np.unique(classes):
        in_class = classes == c
        ax.scatter(
            points[in_class, 0],
            points[in_class, 1],
            s=10,
            marker=markers[int(c) % len(markers)],
            label=class_names[int(c)] if int(c) < len(class_names) else str(c),
        )
    ax.legend(loc="best", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
