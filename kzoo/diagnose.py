"""`kzoo diagnose RUN`: why a multi-task model trains the way it does.

On a sample of the run's validation split (its held-out rows) it reports

    gates      per task, the mean gate weight over each expert of every gated block (MMoE, PLE,
               CGC: their `gates(x)`), expert utilisation, and each gate's entropy
    gradients  per task, the norm of its loss gradient at the shared parameters (those that get a
               gradient from two or more tasks) and the pairwise cosine of those gradients

and flags what usually needs attention (docs/multitask.md says what each flag means and what to try):

    dead expert         an expert whose mean gate weight over tasks is < 1/(4·n_experts)
    collapsed gate      a task whose gate puts > 90 % of its weight on one expert on average
    uniform gates       every task's gate near-uniform (normalised entropy > 0.95): no specialisation
    starved task        a task whose gradient norm is under 10 % of the median of the others
    conflict            a task pair whose gradients have a clearly negative cosine (< -0.1; values
                        nearer 0 are within what one sample of rows gives for unrelated tasks)

It writes RUN/diagnose.json and RUN/diagnose.png (heatmaps of gate weights and gradient cosines).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

DEAD = 0.25       # an expert is dead under DEAD / n_experts mean weight
COLLAPSED = 0.9   # mean top-expert weight of a collapsed gate
UNIFORM = 0.95    # normalised entropy of a near-uniform gate
STARVED = 0.10    # gradient norm relative to the median of the other tasks
CONFLICT = -0.10  # gradient cosine of a task pair in conflict


def gate_report(model, x) -> list[dict]:
    """For every block with `gates(x)`: per task, mean weight per expert and normalised entropy."""
    import keras

    out = []
    for layer in model.layers:
        if not hasattr(layer, "gates"):
            continue
        reach = keras.Model(model.inputs, layer.input)
        block_in = reach(x)
        gates = {k: keras.ops.convert_to_numpy(v) for k, v in layer.gates(block_in).items()}
        tasks = {}
        for task, g in gates.items():
            g = np.clip(g.astype("float64"), 1e-12, 1.0)
            n = g.shape[-1]
            entropy = float(np.mean(-np.sum(g * np.log(g), axis=-1)) / math.log(n)) if n > 1 else 0.0
            tasks[task] = {"mean": g.mean(axis=0).tolist(), "entropy": entropy, "top": float(g.max(axis=-1).mean())}
        out.append({"block": layer.name, "type": type(layer).__name__, "tasks": tasks})
    return out


def gate_flags(report: list[dict]) -> list[str]:
    flags = []
    for block in report:
        tasks = block["tasks"]
        widths = {len(t["mean"]) for t in tasks.values()}
        if len(widths) == 1:  # every task's gate spans the same experts (MMoE): utilisation is comparable
            n = widths.pop()
            use = np.mean([t["mean"] for t in tasks.values()], axis=0)
            for i, u in enumerate(use):
                if u < DEAD / n:
                    flags.append(f"dead expert: {block['block']} expert {i} gets {u:.3f} mean gate weight "
                                 f"(< 1/(4·{n}) = {DEAD / n:.3f}) from every task")
        for task, t in tasks.items():
            if t["top"] > COLLAPSED and len(t["mean"]) > 1:
                flags.append(f"collapsed gate: {block['block']} task {task} puts {t['top']:.0%} of its weight on "
                             f"expert {int(np.argmax(t['mean']))}")
        if tasks and all(t["entropy"] > UNIFORM for t in tasks.values()):
            flags.append(f"uniform gates: every task of {block['block']} spreads its gate almost evenly "
                         f"(normalised entropy > {UNIFORM}); the experts are not specialising")
    return flags


def gradient_report(model, spec, batch) -> dict:
    """Per-task gradient norms at the shared parameters and their pairwise cosines."""
    from kzoo.balancing import task_gradients
    from kzoo.trainer import compile as kcompile

    x, y, w = batch if len(batch) == 3 else (*batch, None)
    kcompile(model, spec)
    grads = task_gradients(model, x, y, w)
    names = list(grads)
    variables = model.trainable_variables
    flat = {t: [np.asarray(g, "float64").reshape(-1) if g is not None else None for g in grads[t]] for t in names}
    shared = [i for i in range(len(variables))
              if sum(flat[t][i] is not None and np.any(flat[t][i] != 0) for t in names) >= 2]
    vec = {t: np.concatenate([flat[t][i] for i in shared]) if shared else np.zeros(1) for t in names}
    norms = {t: float(np.linalg.norm(vec[t])) for t in names}
    cos = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            denom = norms[a] * norms[b]
            cos[f"{a}|{b}"] = float(vec[a] @ vec[b] / denom) if denom > 0 else 0.0
    return {"shared_variables": [variables[i].path for i in shared], "norms": norms, "cosine": cos}


def gradient_flags(report: dict) -> list[str]:
    flags = []
    norms = report["norms"]
    for task, n in norms.items():
        others = [v for k, v in norms.items() if k != task]
        if others and n < STARVED * float(np.median(others)):
            flags.append(f"starved task: {task}'s gradient norm at the shared parameters is {n:.3g}, under "
                         f"{STARVED:.0%} of the others' median ({np.median(others):.3g})")
    for pair, c in report["cosine"].items():
        if c < CONFLICT:
            a, b = pair.split("|")
            flags.append(f"conflict: {a} and {b} pull the shared parameters apart (gradient cosine {c:+.2f})")
    return flags


def diagnose(run, data=None, rows: int = 2048) -> dict:
    """Diagnose a multi-task run on `rows` of its validation split (or of `data`); writes
    RUN/diagnose.json and RUN/diagnose.png and returns the report."""
    from kzoo.pipeline import load_for, make_dataset, split_frames
    from kzoo.rundir import RunDir

    run = RunDir(run)
    spec, model = run.spec(), run.model()
    if data is None:
        spec, frame = load_for(spec, run.run_info()["data"])
        frame = split_frames(spec, frame)[1]
    else:
        spec, frame = load_for(spec, data)
    frame = frame.iloc[:rows].reset_index(drop=True)
    batch = next(iter(make_dataset(frame, spec, run.preprocessor(), batch_size=len(frame))))
    report = {"run": str(run.path), "rows": len(frame), "gates": gate_report(model, batch[0])}
    if len(spec.tasks) > 1:
        report["gradients"] = gradient_report(model, spec, batch)
    report["flags"] = gate_flags(report["gates"]) + (gradient_flags(report["gradients"]) if "gradients" in report else [])
    (run.path / "diagnose.json").write_text(json.dumps(report, indent=2))
    plot(report, run.path / "diagnose.png")
    return report


def table(report: dict) -> str:
    """The report as terminal text."""
    lines = [f"diagnose {report['run']} on {report['rows']} validation rows"]
    for block in report["gates"]:
        n = max(len(t["mean"]) for t in block["tasks"].values())
        lines.append(f"\n{block['block']} ({block['type']}): mean gate weight per expert")
        lines.append(f"  {'task':<16}" + "".join(f"{'e' + str(i):>7}" for i in range(n)) + f"{'entropy':>9}")
        for task, t in block["tasks"].items():
            lines.append(f"  {task:<16}" + "".join(f"{v:>7.3f}" for v in t["mean"]) + f"{t['entropy']:>9.2f}")
    if not report["gates"]:
        lines.append("\nno gated block (MMoE, PLE, CGC) in this model")
    if "gradients" in report:
        g = report["gradients"]
        lines.append(f"\ngradients at the {len(g['shared_variables'])} shared variables")
        for task, n in g["norms"].items():
            lines.append(f"  {task:<16} norm {n:.4g}")
        for pair, c in g["cosine"].items():
            lines.append(f"  cos({pair.replace('|', ', ')}) = {c:+.3f}")
    lines.append("\nflags:" if report["flags"] else "\nflags: none")
    lines += [f"  - {f}" for f in report["flags"]]
    return "\n".join(lines)


def plot(report: dict, png: Path) -> None:
    from kzoo.plots import pyplot, save_figure

    panels = [b for b in report["gates"]] + (["gradients"] if "gradients" in report else [])
    if not panels:
        return
    fig, axes = pyplot().subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        if panel == "gradients":
            names = list(report["gradients"]["norms"])
            m = np.eye(len(names))
            for pair, c in report["gradients"]["cosine"].items():
                a, b = (names.index(t) for t in pair.split("|"))
                m[a, b] = m[b, a] = c
            im = ax.imshow(m, cmap="RdBu", vmin=-1, vmax=1)
            ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
            ax.set_yticks(range(len(names)), names)
            ax.set_title("task gradient cosine (shared params)")
            for (i, j), v in np.ndenumerate(m):
                ax.text(j, i, f"{v:+.2f}", ha="center", va="center", fontsize=8)
        else:
            tasks = list(panel["tasks"])
            n = max(len(t["mean"]) for t in panel["tasks"].values())
            m = np.full((len(tasks), n), np.nan)
            for i, t in enumerate(tasks):
                m[i, :len(panel["tasks"][t]["mean"])] = panel["tasks"][t]["mean"]
            im = ax.imshow(m, cmap="viridis", vmin=0, vmax=max(1e-9, np.nanmax(m)))
            ax.set_xticks(range(n), [f"e{i}" for i in range(n)])
            ax.set_yticks(range(len(tasks)), tasks)
            ax.set_title(f"{panel['block']}: mean gate weight")
            for (i, j), v in np.ndenumerate(m):
                if not np.isnan(v):
                    dark = v < 0.6 * np.nanmax(m)
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w" if dark else "k")
        fig.colorbar(im, ax=ax, fraction=0.046)
    save_figure(fig, png, f"kzoo diagnose: {len(report['flags'])} flag(s)")
