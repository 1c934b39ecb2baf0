"""Held-out metrics: each task's report (kzoo.tasks) on its served outputs.

    evaluate(run, data=None)                   a run on its own test split, or on every row of `data`
    evaluate_frame(model, spec, pre, frame)    a trained model on a conformed frame with labels
"""

from __future__ import annotations

from kzoo.predict import predict_frame
from kzoo.tasks import tasks_of


def evaluate_frame(model, spec, pre, frame, batch_size: int = 4096, tasks=None, calibration=None,
                   reliability_dir=None) -> dict:
    """{output: report, "examples": n}: binary tasks get AUC/logloss/ECE..., regression MSE/MAE..., a
    conditional task its joint and its conditional (on the parent's positives), a retrieval task
    Recall@K / NDCG@K against its item corpus beside a popularity baseline. `tasks`: the fitted
    Task objects (a retrieval task needs its corpus), else tasks_of(spec). `calibration`: a run's
    calibration.json (kzoo.calibration), applied to the served outputs. `reliability_dir`: write
    reliability_<task>.png there for each binary task."""
    served = predict_frame(model, spec, pre, frame, batch_size, calibration=calibration)
    result: dict = {}
    tasks = tasks if tasks is not None else tasks_of(spec)
    for task in tasks:
        result.update(task.report(frame, served))
        if hasattr(task, "rank_report"):
            result[task.name].update(task.rank_report(model, spec, pre, frame, batch_size)[task.name])
    result["examples"] = int(len(frame))
    if reliability_dir is not None:
        from kzoo.calibration import reliability_pngs

        reliability_pngs(tasks, frame, served, reliability_dir, spec.name)
    return result


def evaluate(run, data=None) -> dict:
    """Metrics of a run: on its own test split (the data it was trained with), or on every row of `data`."""
    from kzoo.pipeline import load_for, split_frames
    from kzoo.rundir import RunDir

    run = RunDir(run)
    spec = run.spec()
    if data is None:
        from kzoo.streaming import prepare_stream, wants_stream

        source = run.run_info()["data"]
        if wants_stream(spec, source):  # streamed: one pass over the shards again finds the same test sample
            frame = prepare_stream(spec, source, int(run.run_info().get("batch_size", 512))).frames["test"]
        else:
            spec, frame = load_for(spec, source)
            frame = split_frames(spec, frame)[2]
    else:
        spec, frame = load_for(spec, data)
    from kzoo.calibration import load as load_calibration

    return evaluate_frame(run.model(), spec, run.preprocessor(), frame, tasks=run.tasks(spec),
                          calibration=load_calibration(run.path))
