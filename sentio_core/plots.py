"""Report images: equity and drawdown curves as PNG bytes (matplotlib, headless)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sentio_core.metrics import drawdown  # noqa: E402


def equity_drawdown_png(title: str, timestamps: list[str], curves: dict[str, np.ndarray], dpi: int = 80) -> bytes:
    """Two stacked panels: equity (normalised to 1 at the start) and drawdown, one line per strategy."""
    x = np.array([np.datetime64(t[:19]) for t in timestamps])
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 4.5), sharex=True, height_ratios=[2, 1])
    for name, eq in curves.items():
        top.plot(x, eq / eq[0], label=name, linewidth=1.2)
        bottom.plot(x, -drawdown(eq), linewidth=1.0)
    top.set_title(title, fontsize=10)
    top.set_ylabel("equity (x start)")
    top.legend(fontsize=7, ncol=3, loc="upper left")
    bottom.set_ylabel("drawdown")
    return _png(fig, (top, bottom), dpi)


def _png(fig, axes, dpi: int) -> bytes:
    """The figure, its axes gridded and small-labelled, as PNG bytes; the figure is closed."""
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def evidence_png(title: str, timestamps: list[str], curves: dict[str, np.ndarray], band: tuple[np.ndarray, np.ndarray],
                 band_label: str, dpi: int = 80) -> bytes:
    """Growth of 1 over the concatenated test bars, one line per strategy (NaN where a strategy has
    no bar, e.g. the champion before its training window ends), and a shaded band around the first.

    :param timestamps: (T,) each P&L bar's close; every curve and the band's edges are (T,).
    """
    x = np.array([np.datetime64(t[:19]) for t in timestamps])
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.fill_between(x, band[0], band[1], alpha=0.2, linewidth=0, label=band_label)
    for k, (name, curve) in enumerate(curves.items()):
        ax.plot(x, curve, label=name, linewidth=1.6 if k == 0 else 1.0)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel("growth of 1, after costs")
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    return _png(fig, (ax,), dpi)
