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
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()
