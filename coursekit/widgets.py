"""One drawing function, two ways to show it: a slider for a person, a static figure for a batch run.

Widgets only work where a live front end (JupyterLab, Notebook, VS Code) talks to
the kernel. Under papermill, in a PDF or in quick mode they would show as
``interactive(children=(IntSlider(...` text or not at all, so :func:`explore`
calls the same ``draw`` function for a few fixed values instead.

A session counts as interactive when all of these hold:

* the notebook is not in quick mode;
* the environment variable ``COURSEKIT_STATIC`` is not set to 1/true/yes (batch
  tools set it so that full, non-quick runs also draw static figures);
* the code runs in a Jupyter kernel (not plain Python or IPython in a terminal);
* the kernel was not launched by a batch runner (papermill, nbconvert, nbclient, pytest),
  judged from the launching process's command line where the system shows it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

STATIC_ENV = "COURSEKIT_STATIC"
BATCH_RUNNERS = ("papermill", "nbconvert", "nbclient", "pytest")


def _in_jupyter_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def _launched_by_batch_runner() -> bool:
    """True if the process that started this kernel is papermill, nbconvert, ... (Linux /proc only)."""
    parent = os.environ.get("JPY_PARENT_PID")
    if not parent or not parent.isdigit():
        return False
    try:
        cmdline = Path(f"/proc/{parent}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return any(runner in cmdline for runner in BATCH_RUNNERS)


def interactive_session(quick: bool = False) -> bool:
    """Should the notebook show widgets (True) or static figures (False)? See the module docstring."""
    if quick:
        return False
    if os.environ.get(STATIC_ENV, "").strip().lower() in {"1", "true", "yes"}:
        return False
    return _in_jupyter_kernel() and not _launched_by_batch_runner()


def show_progress(quick: bool = False) -> bool:
    """Whether to show tqdm progress bars: only for a person watching (batch logs and PDFs stay clean)."""
    return interactive_session(quick)


def make_widget(draw: Callable[..., Any], controls: Mapping[str, Any], initial: Mapping[str, Any] | None = None):
    """``ipywidgets.interactive(draw, **controls)`` with the figure redrawn only when a slider is released.

    :param controls: name -> widget or ipywidgets abbreviation, e.g. ``{"t": (0, 999, 1)}``
    :param initial: name -> the value a control built from an abbreviation starts at (ipywidgets would
        start a slider in the middle of its range); a value outside the range is clipped to it
    """
    import ipywidgets

    built = dict(controls)
    for name, value in (initial or {}).items():
        if name in built and not isinstance(built[name], ipywidgets.Widget):
            built[name] = ipywidgets.interactive.widget_from_abbrev(built[name], value)
    widget = ipywidgets.interactive(draw, **built)
    for control in widget.kwargs_widgets:
        # redrawing a matplotlib figure on every pixel of a drag is slow: wait for the release
        if hasattr(control, "continuous_update"):
            control.continuous_update = False
    return widget


def _display_widget(widget) -> None:
    """Display ``widget`` without the text/plain fallback, so a non-widget viewer shows nothing rather than junk."""
    from IPython.display import display

    bundle = widget._repr_mimebundle_()
    bundle = {k: v for k, v in bundle.items() if k != "text/plain"}
    display(bundle, raw=True)


def explore(
    draw: Callable[..., Any],
    controls: Mapping[str, Any],
    static: Sequence[Mapping[str, Any]],
    quick: bool = False,
) -> None:
    """Show ``draw`` with sliders when interactive, else call it once per entry of ``static``.

    :param draw: draws one figure (and calls ``plt.show()``) for keyword arguments named like ``controls``
    :param controls: the widgets, as for :func:`make_widget`
    :param static: the keyword arguments of the static figures, e.g. ``[{"t": 0}, {"t": 500}]``; the sliders
        start at the first entry's values (the notebook's settings)
    :param quick: the notebook's quick flag (quick runs are always static)
    """
    if not static:
        raise ValueError("explore() needs at least one entry in static= for batch runs and PDFs")
    if interactive_session(quick):
        _display_widget(make_widget(draw, controls, initial=static[0]))
        return
    for kwargs in static:
        draw(**kwargs)
