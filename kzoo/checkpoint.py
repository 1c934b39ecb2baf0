"""Step-level checkpoints: a run killed at any step resumes where its last checkpoint left it.

    StepCheckpoint(folder, every)   a callback saving the model's and the optimizer's state, and
                                    where training stands (epoch, batches done in it), every
                                    `every` batches and at each epoch's end
    StepCheckpoint.restore(model)   -> (epoch, batches done in it, saved extras) or None

The trainer fits one epoch at a time from data whose batches are the same for the same epoch in
any process (kzoo.pipeline's `train_epoch`), and skips the batches a resumed epoch already did, so
a killed and resumed run takes the same steps as one never interrupted. Keras' BackupAndRestore
saves at a batch too, but resumes at the start of that epoch and redoes it.

A checkpoint is a folder `ckpt-<step>` holding `model.weights.h5` (every variable of the model:
weights, optimizer slots and iterations), `seeds.npz` (the state of every dropout's random
seed, which Keras' weight files leave out) and `progress.json`; `latest` names
the newest whole one and is replaced atomically after the folder is complete, so a process killed
while writing leaves the previous checkpoint in force.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import keras
import numpy as np

LATEST = "latest"
FAULT_ENV = "KZOO_FAULT_KILL_AT_STEP"  # testing hook: SIGKILL this process after global step N


def cache_saving_skipsets() -> None:
    """Make Keras' weight saving stop building a throwaway object per saved layer.

    Keras 3's `saving_lib.get_attr_skipset(kind)` (the attribute names its saving walk skips) stores
    its result under `saving_attr_skipset_<kind>` but looks it up under `saving_attr_skiplist_<kind>`,
    so the cache never hits: every layer of every `save_weights` builds a fresh `Layer()` (46 of them
    for the FM model), each left in reference cycles that only Python's full collection frees. A run
    that checkpoints for hours then piles this garbage up between the rare full collections: the
    soak's resident memory crept up ~20 MiB per 100k steps (docs/reliability.md "Long runs").
    Filling the key Keras reads with what it computes removes the garbage (and ~the time of building
    them); with a Keras that caches correctly this only fills an unused key. Re-run before each save,
    as `keras.backend.clear_session()` empties Keras' global state."""
    from keras.src.backend.common import global_state
    from keras.src.saving import saving_lib

    for kind in ("Operation", "Layer", "Functional", "Sequential", "Metric", "Optimizer", "Loss"):
        key = f"saving_attr_skiplist_{kind}"
        if global_state.get_global_attribute(key) is None:
            global_state.set_global_attribute(key, saving_lib.get_attr_skipset(kind))


class StepCheckpoint(keras.callbacks.Callback):
    """Save the run's state every `every` batches and at each epoch's end, into `folder`.

    Args:
        folder: Path. The run's backup folder (removed by the trainer once training ends).
        every: int. Batches between checkpoints.
        extras: callable returning a JSON-able dict saved with each checkpoint (the trainer's
            callbacks' own state: the step logger's count, early stopping's best and patience).
    """

    def __init__(self, folder, every: int, extras=None):
        super().__init__()
        self.folder, self.every, self.extras = Path(folder), max(1, int(every)), extras
        self.epoch, self.done, self.step = 0, 0, 0  # epoch, batches done in it, global batches
        kill = os.environ.get(FAULT_ENV)
        self.kill_at = int(kill) if kill else None

    def start_epoch(self, epoch: int, done: int = 0) -> None:
        """The trainer says which epoch the next fit runs and how many of its batches are skipped."""
        self.epoch, self.done = epoch, done

    def on_train_batch_end(self, batch, logs=None):
        self.done += 1
        self.step += 1
        if self.done % self.every == 0:
            self.save()
        if self.kill_at is not None and self.step >= self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_epoch_end(self, epoch, logs=None):
        self.epoch, self.done = epoch + 1, 0
        self.save()

    def save(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"ckpt-{self.step:09d}-{self.epoch}"
        target = self.folder / name
        partial = self.folder / f".{name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        sync = getattr(self.model, "jax_state_sync", None)
        if sync:  # JAX keeps the training state apart from the variables while fit runs
            sync()
        cache_saving_skipsets()
        self.model.save_weights(partial / "model.weights.h5")
        np.savez(partial / "seeds.npz", *[np.asarray(v) for v in _seed_states(self.model)])
        progress = {"epoch": self.epoch, "done": self.done, "step": self.step,
                    "extras": self.extras() if self.extras else {}}
        (partial / "progress.json").write_text(json.dumps(progress))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(partial, target)
        pointer = self.folder / f".{LATEST}.partial"
        pointer.write_text(name)
        os.replace(pointer, self.folder / LATEST)  # the checkpoint now in force
        for old in self.folder.iterdir():  # earlier checkpoints and leftovers of a killed save
            if old.name not in (name, LATEST) and (old.name.startswith("ckpt-") or old.name.endswith(".partial")):
                shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)

    def restore(self, model: keras.Model):
        """Load the newest whole checkpoint into `model` (built, compiled); returns (epoch, batches
        done in it, extras), or None when there is none."""
        pointer = self.folder / LATEST
        if not pointer.is_file():
            return None
        target = self.folder / pointer.read_text().strip()
        progress = json.loads((target / "progress.json").read_text())
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(target / "model.weights.h5")
        with np.load(target / "seeds.npz") as seeds:
            for i, variable in enumerate(_seed_states(model)):
                variable.assign(seeds[f"arr_{i}"])
        self.epoch, self.done, self.step = progress["epoch"], progress["done"], progress["step"]
        return progress["epoch"], progress["done"], progress.get("extras", {})


def _seed_states(model: keras.Model) -> list:
    """The state variables of the random seed generators of `model`'s layers (dropout masks), in layer order."""
    return [sg.state for layer in model._flatten_layers() for sg in getattr(layer, "_seed_generators", [])]
