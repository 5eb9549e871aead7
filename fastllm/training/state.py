"""Checkpoints of a training run: atomic directories that `fastllm.load` reads, plus the state to resume exactly.

    out_dir/step_0000500/   model.safetensors, config.json, tokenizer.json   (fastllm.save: fastllm.load reads it)
                            trainer_state.pt   optimizer, step, data cursor, RNG states, best val loss, config
    out_dir/best/           the same, at the lowest validation loss so far

A checkpoint is written whole into a temporary directory in out_dir, every file fsynced, then renamed into place
with `os.replace` (and out_dir fsynced), so a kill at any moment leaves either the previous checkpoint or the new
one, never a torn one. Replacing an existing directory (`best`) moves the old one aside first; `recover` finishes or
undoes an interrupted swap and deletes stale temporaries. trainer_state.pt holds only tensors and plain containers,
so it loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile

import torch

STATE_FILE = "trainer_state.pt"
_STEP_DIR = re.compile(r"^step_(\d+)$")
_TMP_PREFIX, _OLD_SUFFIX = ".tmp-", ".old"


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def usual_permissions(directory: str) -> None:
    """Gives a directory and its files the modes the umask allows (mkdtemp makes 0700, safetensors writes 0600)."""
    umask = os.umask(0o022)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)
    for name in os.listdir(directory):
        os.chmod(os.path.join(directory, name), 0o666 & ~umask)


def step_dir(out_dir: str, step: int) -> str:
    return os.path.join(out_dir, f"step_{step:07d}")


def save_checkpoint(path: str, model, tokenizer, state: dict) -> None:
    """Writes the directory `path` atomically: weights via fastllm.save and `state` as trainer_state.pt."""
    from fastllm.checkpoints import save

    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=_TMP_PREFIX + os.path.basename(path) + "-", dir=parent)
    try:
        save(model, tmp, tokenizer=tokenizer)
        torch.save(state, os.path.join(tmp, STATE_FILE))
        usual_permissions(tmp)
        for name in os.listdir(tmp):
            _fsync(os.path.join(tmp, name))
        _fsync(tmp)
        old = path + _OLD_SUFFIX
        if os.path.exists(path):
            if os.path.exists(old):
                shutil.rmtree(old)
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync(parent)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def recover(out_dir: str) -> None:
    """Cleans up after a kill: deletes temporaries; puts back `X.old` where `X` is missing, else deletes it."""
    if not os.path.isdir(out_dir):
        return
    for name in os.listdir(out_dir):
        full = os.path.join(out_dir, name)
        if name.startswith(_TMP_PREFIX):
            shutil.rmtree(full, ignore_errors=True)
        elif name.endswith(_OLD_SUFFIX) and os.path.isdir(full):
            target = full[: -len(_OLD_SUFFIX)]
            if os.path.isdir(target):
                shutil.rmtree(full, ignore_errors=True)
            else:
                os.replace(full, target)


def step_checkpoints(out_dir: str) -> list[tuple[int, str]]:
    """(step, path) of the complete step_* checkpoints in out_dir, oldest first."""
    if not os.path.isdir(out_dir):
        return []
    found = []
    for name in os.listdir(out_dir):
        m = _STEP_DIR.match(name)
        path = os.path.join(out_dir, name)
        if m and os.path.isfile(os.path.join(path, STATE_FILE)):
            found.append((int(m.group(1)), path))
    return sorted(found)


def latest_checkpoint(out_dir: str) -> str | None:
    found = step_checkpoints(out_dir)
    return found[-1][1] if found else None


def prune(out_dir: str, keep_last: int) -> None:
    """Deletes all but the newest keep_last step_* checkpoints."""
    for _, path in step_checkpoints(out_dir)[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)


def load_state(path: str) -> dict:
    return torch.load(os.path.join(path, STATE_FILE), map_location="cpu", weights_only=True)


def rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
