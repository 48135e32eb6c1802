"""Resume continues the same run, or says why it cannot.

A damaged newest checkpoint (truncated files, a flipped bit) used to stop the resume with an error
that blamed the model ("does not match these params ... use another directory"), though older
steps were intact; and a resume with another learning rate, batch size, data set or dtype was
accepted silently (a float32 checkpoint was cast to bfloat16), breaking the promise of a bit-for-bit
resume. Now a damaged step is skipped with a warning naming it, and another run is refused with an
error naming what differs, unless ``resume_check=False``.
"""

from __future__ import annotations

import glob
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jrnn
from jrnn.train import fit
from jrnn.train.checkpoint import Damaged, restore

B, T, D, H, O = 4, 6, 3, 5, 2
RUN = dict(steps=6, checkpoint_every=2, batch_size=2, progress=False, key=jax.random.PRNGKey(3))


def setup(hidden=H, dtype=jnp.float64):
    model = jrnn.RNN(jrnn.LSTMCell(hidden), output_size=O)
    params = model.init(jax.random.PRNGKey(0), D, dtype)
    rng = np.random.default_rng(1)
    data = (jnp.asarray(rng.standard_normal((B, T, D)), dtype), jnp.asarray(rng.standard_normal((B, T, O)), dtype))
    return model, params, data


def leaves_equal(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))  # fmt: skip


def flip_every_data_file(step_dir) -> int:
    files = [f for f in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True) if os.path.isfile(f)]
    for f in files:
        raw = bytearray(open(f, "rb").read())
        raw[len(raw) // 2] ^= 0x04
        open(f, "wb").write(raw)
    return len(files)


def garble_meta(step_dir) -> None:
    with open(os.path.join(step_dir, "meta", "metadata"), "w") as f:
        f.write("{garbage")


# orbax's reading tasks end with unretrieved exceptions when a step is damaged
UNRAISABLE = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@UNRAISABLE
@pytest.mark.parametrize("damage", [flip_every_data_file, garble_meta])
def test_a_damaged_newest_checkpoint_is_skipped_and_the_run_resumes_from_the_newest_intact_one(tmp_path, damage):
    model, params, data = setup()
    optimizer = optax.adam(1e-2)
    whole = fit(model, params, optimizer, data, **dict(RUN, steps=8))
    fit(model, params, optimizer, data, checkpoint_dir=tmp_path, **RUN)  # steps 2, 4, 6 kept
    damage(str(tmp_path / "6"))
    with pytest.warns(UserWarning, match=r"damaged checkpoint .*step 6 .*resuming from step 4, the newest intact one"):
        resumed = fit(model, params, optimizer, data, checkpoint_dir=tmp_path, **dict(RUN, steps=8))
    assert resumed.step == 8
    assert leaves_equal((resumed.params, resumed.opt_state), (whole.params, whole.opt_state))
    assert resumed.history["train"]["loss"] == whole.history["train"]["loss"]


@UNRAISABLE
def test_a_flipped_bit_is_never_restored_silently(tmp_path):
    """A flipped bit in an array's stored bytes can decode into other numbers without an error
    from the storage layer (arrays above 1 KiB are stored outside its checksummed index); the
    checksums saved with the checkpoint catch it (``restore`` raises ``Damaged``). Every flip
    either raises or restores the saved values exactly."""
    model, params, data = setup(hidden=16)
    optimizer = optax.adam(1e-2)
    fit(model, params, optimizer, data, checkpoint_dir=tmp_path, **dict(RUN, steps=2))
    template = (params, optimizer.init(params))
    saved = restore(tmp_path, *template)
    files = [f for f in glob.glob(str(tmp_path / "2" / "state" / "**" / "d" / "*"), recursive=True)]
    outcomes = {"damaged": 0, "storage error": 0, "unchanged": 0}
    for f in files:
        raw = open(f, "rb").read()
        for position in range(len(raw) // 8, len(raw), max(1, len(raw) // 6)):
            flipped = bytearray(raw)
            flipped[position] ^= 0x01
            open(f, "wb").write(flipped)
            try:
                got = restore(tmp_path, *template)
            except Damaged as err:
                outcomes["storage error" if "cannot be read back" in str(err) else "damaged"] += 1
            except ValueError:
                outcomes["storage error"] += 1
            else:
                assert leaves_equal(got, saved), f"byte {position} of {f} flipped: other values restored"
                outcomes["unchanged"] += 1
        open(f, "wb").write(raw)
    assert leaves_equal(restore(tmp_path, *template), saved)  # intact again
    assert outcomes["damaged"] > 0, outcomes  # flips only the checksums caught


@UNRAISABLE
def test_stored_bytes_the_storage_layer_cannot_read_raise_damaged(tmp_path):
    """A flip the storage layer detects while reading an array (the first byte of a compressed
    chunk: its frame's magic number) is a ``Damaged`` naming the step, not orbax's bare
    ``Exception`` with the storage's spec."""
    model, params, data = setup(hidden=16)
    optimizer = optax.adam(1e-2)
    fit(model, params, optimizer, data, checkpoint_dir=tmp_path, **dict(RUN, steps=2))
    template = (params, optimizer.init(params))
    unreadable = 0
    for f in glob.glob(str(tmp_path / "2" / "state" / "**" / "d" / "*"), recursive=True):
        raw = open(f, "rb").read()
        flipped = bytearray(raw)
        flipped[0] ^= 0x01
        open(f, "wb").write(flipped)
        try:
            restore(tmp_path, *template)
        except Damaged as err:
            unreadable += "step 2: the stored arrays cannot be read back" in str(err)
        except ValueError:
            pass  # the storage layer's own index checksum, named by its ValueError
        finally:
            open(f, "wb").write(raw)
    assert unreadable > 0


def test_when_every_checkpoint_is_damaged_the_error_says_so(tmp_path):
    model, params, data = setup()
    optimizer = optax.adam(1e-2)
    fit(model, params, optimizer, data, checkpoint_dir=tmp_path, **dict(RUN, steps=4))
    for step in ("2", "4"):
        garble_meta(str(tmp_path / step))
    with pytest.raises(ValueError, match=r"every checkpoint is damaged .*step 4 .*step 2"):
        fit(model, params, optimizer, data, checkpoint_dir=tmp_path, **RUN)


def test_a_checkpoint_of_another_model_is_refused_naming_the_array(tmp_path):
    model, params, data = setup()
    fit(model, params, optax.adam(1e-2), data, checkpoint_dir=tmp_path, **dict(RUN, steps=2))
    other, other_params, _ = setup(hidden=H + 1)
    with pytest.raises(ValueError, match=r"another model or optimizer: .*has shape .* in the checkpoint"):
        fit(other, other_params, optax.adam(1e-2), data, checkpoint_dir=tmp_path, **RUN)


@pytest.mark.parametrize("change, named", [
    (dict(optimizer=optax.adam(5e-3)), "the optimizer"),
    (dict(optimizer=optax.rmsprop(1e-2)), "another model or optimizer"),  # another state structure
    (dict(batch_size=4), "batch_size: 2 in the checkpoint, 4 now"),
    (dict(truncation=3), "truncation: None in the checkpoint, 3 now"),
    (dict(shuffle=False), "shuffle: True in the checkpoint, False now"),
    (dict(data="other"), "the data"),
    (dict(backward="autodiff"), "backward: 'bptt' in the checkpoint, 'autodiff' now"),
    (dict(dtype=jnp.float32), "dtype: float64 in the checkpoint, float32 now"),
])  # fmt: skip
def test_resuming_another_run_is_refused_naming_what_differs(tmp_path, change, named):
    model, params, data = setup()
    fit(model, params, optax.adam(1e-2), data, checkpoint_dir=tmp_path, **dict(RUN, steps=2))
    run = dict(RUN)
    optimizer = change.get("optimizer", optax.adam(1e-2))
    for name in ("batch_size", "truncation", "shuffle", "backward"):
        if name in change:
            run[name] = change[name]
    if change.get("data") == "other":
        data = (data[0] + 1.0, data[1])
    if "dtype" in change:
        params = jax.tree_util.tree_map(lambda a: a.astype(change["dtype"]), params)
        data = tuple(a.astype(change["dtype"]) for a in data)
    with pytest.raises(ValueError, match=named):
        fit(model, params, optimizer, data, checkpoint_dir=tmp_path, **run)


def test_resume_check_false_resumes_another_run_with_a_warning(tmp_path):
    model, params, data = setup()
    first = fit(model, params, optax.adam(1e-2), data, checkpoint_dir=tmp_path, **dict(RUN, steps=2))
    with pytest.warns(UserWarning, match="resuming step 2 .* with batch_size: 2 in the checkpoint, 4 now"):
        more = fit(model, params, optax.adam(1e-2), data, checkpoint_dir=tmp_path, resume_check=False,
                   **dict(RUN, steps=3, batch_size=4))  # fmt: skip
    assert more.step == 3 and more.history["train"]["loss"][:2] == first.history["train"]["loss"]
    with pytest.raises(TypeError, match="resume_check must be"):
        fit(model, params, optax.adam(1e-2), data, checkpoint_dir=tmp_path, resume_check="no", **RUN)


def test_the_same_run_resumes_without_a_warning(tmp_path):
    model, params, data = setup()
    fit(model, params, optax.adam(1e-2), data, checkpoint_dir=tmp_path, **dict(RUN, steps=2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        more = fit(model, params, optax.adam(1e-2), data, checkpoint_dir=tmp_path, **RUN)
    assert more.step == 6


# ----------------------------------------------------------------------------------------------
# The directory: one fit at a time, writable up front
# ----------------------------------------------------------------------------------------------


def test_a_second_fit_on_a_directory_in_use_is_refused_before_it_writes(tmp_path):
    from jrnn.train.checkpoint import Checkpointer

    model, params, data = setup()
    with Checkpointer(tmp_path):  # another run holds the directory
        with pytest.raises(ValueError, match=r"checkpoint_dir must be a directory no other fit is writing to, .*in use by process"):
            fit(model, params, optax.adam(1e-2), data, checkpoint_dir=tmp_path, **RUN)
        assert not [p for p in os.listdir(tmp_path) if p[0].isdigit()]
    done = fit(model, params, optax.adam(1e-2), data, checkpoint_dir=tmp_path, **RUN)  # released
    assert done.step == 6


def _read_only_dir(tmp_path) -> str:
    path = tmp_path / "ro"
    path.mkdir()
    path.chmod(0o555)
    try:
        (path / "probe").write_text("")
    except OSError:
        return str(path / "ck")
    if os.path.isdir("/sys"):  # as root every directory is writable, but sysfs is not
        return "/sys/jrnn-checkpoints"
    pytest.skip("no read-only directory at hand")


def test_a_read_only_checkpoint_dir_is_refused_before_any_training(tmp_path):
    model, params, data = setup()
    directory = _read_only_dir(tmp_path)
    with pytest.raises(ValueError, match=r"checkpoint_dir must be a directory this process can write checkpoints to"):
        fit(model, params, optax.adam(1e-2), data, checkpoint_dir=directory, **RUN)


# ----------------------------------------------------------------------------------------------
# Ctrl-C
# ----------------------------------------------------------------------------------------------


def test_ctrl_c_stops_after_the_step_saves_it_and_the_run_resumes_bit_for_bit(tmp_path):
    import signal

    from jrnn.train import FitInterrupted

    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is handled by the test runner here")
    model, params, data = setup()
    xs, targets = data

    def batches(key, step):  # the data of step 3 is drawn, then Ctrl-C arrives
        if step == 3 and interrupt[0]:
            interrupt[0] = False
            os.kill(os.getpid(), signal.SIGINT)
        return xs, targets

    run = dict(steps=8, checkpoint_every=100, progress=False, key=jax.random.PRNGKey(3))
    interrupt = [False]
    whole = fit(model, params, optax.adam(1e-2), batches, **run)
    interrupt[0] = True
    with pytest.raises(FitInterrupted, match="after step 4; checkpoint of step 4 saved") as caught:
        fit(model, params, optax.adam(1e-2), batches, checkpoint_dir=tmp_path, **run)
    assert caught.value.result.step == 4 and len(caught.value.result.history["train"]["loss"]) == 4
    assert sorted(p for p in os.listdir(tmp_path) if p.isdigit()) == ["4"]
    resumed = fit(model, params, optax.adam(1e-2), batches, checkpoint_dir=tmp_path, **run)
    assert leaves_equal((resumed.params, resumed.opt_state), (whole.params, whole.opt_state))
    # without a checkpoint_dir the run so far comes with the exception
    interrupt[0] = True
    with pytest.raises(FitInterrupted) as caught:
        fit(model, params, optax.adam(1e-2), batches, **run)
    assert caught.value.checkpoint_dir is None and caught.value.result.step == 4
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
