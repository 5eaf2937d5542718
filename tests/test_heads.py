"""What the network predicts (issue 12): long training sequences, checkpoints that carry the
head (and refuse a retired one), and the structure figure."""

import math

import numpy as np
import pytest

from conftest import run_cli, write_int16, melody


def test_sequences_are_long_with_a_stride_and_shorten_for_short_music(mc):
    starts = np.array([0, 400, 1000])  # files of 100 s and 150 s
    length = mc.sequence_length(starts, 8.0)
    assert length == 32 and mc.training_stride(length) == 8
    train, validation = mc.split_windows(starts, length, mc.training_stride(length))
    assert np.all(np.diff(train[train < 400]) == 8)
    for part in (train, validation):
        ends = starts[np.searchsorted(starts, part, side="right")]
        assert np.all(part + length + 1 <= ends)  # no sequence (with its target) crosses a file
    assert not set(range(360, 400)) & set((train[:, None] + np.arange(33)).ravel())
    inputs, targets = mc.gather_windows(np.arange(1000, dtype=np.float32)[:, None],
                                        np.array([8, 0]), length)
    assert inputs.shape == (2, 32, 1)
    np.testing.assert_array_equal(targets[:, :, 0] - inputs[:, :, 0], 1)
    # 15 s of music cannot hold a training and a held-out sequence of 8 s; of 4 s it can
    assert mc.sequence_length(np.array([0, 60]), 8.0) == 16
    assert mc.sequence_length(np.array([0, 12]), 8.0) == mc.WINDOW_FRAMES


def test_the_structure_figure_tells_a_repeating_piece_from_a_wander(mc):
    rng = np.random.default_rng(0)
    phrase = rng.normal(size=(4, 64))
    repeating = np.tile(phrase, (8, 1)) + 0.1 * rng.normal(size=(32, 64))  # a 4 s phrase, again
    wander = np.cumsum(rng.normal(size=(32, 64)), axis=0)  # never comes back
    noise = rng.normal(size=(32, 64))
    assert mc.structure_of(repeating) > 0.2
    assert abs(mc.structure_of(noise)) < 0.1
    assert mc.structure_of(wander) < mc.structure_of(repeating) - 0.2
    assert math.isnan(mc.structure_of(noise[:2]))


def test_the_checkpoint_keeps_its_head_and_a_mismatch_is_refused(mc, tmp_path):
    music = tmp_path / "music"
    music.mkdir()
    write_int16(music / "melody.wav", melody(40.0))
    common = ["-d", music, "-t", tmp_path / "td", "-n", 8, "-l", 1, "-s", 2, "-g", 1,
              "--no-plots", "--random-seed", 1]
    first = run_cli(*common, "-e", 1, "-o", tmp_path / "a", "--head", "average", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert f"sequences of {mc.SEQUENCE_SECONDS:g} s" in first.stdout  # 40 s hold the default
    metadata, _, _ = mc.read_checkpoint_metadata(tmp_path / "td" / mc.CHECKPOINT_NAME)
    assert metadata["head"] == "average"
    assert metadata["sequence_frames"] == round(mc.SEQUENCE_SECONDS * mc.FRAMES_PER_SECOND)
    refused = run_cli(*common, "-e", 0, "-o", tmp_path / "b", "--head", "units", cwd=tmp_path)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "--head average" in refused.stderr and "model.keras" in refused.stderr
    again = run_cli(*common, "-e", 0, "-o", tmp_path / "c", cwd=tmp_path)  # the checkpoint's
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "c-0.wav").exists()
    assert mc.head_of(mc.load_checkpoint_model(tmp_path / "td" / mc.CHECKPOINT_NAME)).name \
        == "average"


def test_a_checkpoint_from_before_heads_counts_as_average(mc, tmp_path):
    mc.check_checkpoint_head(tmp_path, {}, None)
    mc.check_checkpoint_head(tmp_path, {}, "average")
    with pytest.raises(mc.UserError, match="--head average"):
        mc.check_checkpoint_head(tmp_path, {}, "units")


@pytest.mark.parametrize("retired", ["median", "mixture"])
def test_a_checkpoint_of_a_retired_head_is_refused_and_left_alone(mc, tmp_path, retired):
    """Heads that lost and left the script: their checkpoints are refused with what to do, the
    file untouched, whatever --head asks."""
    for asked in (None, "average"):
        with pytest.raises(mc.UserError, match="no longer has") as refused:
            mc.check_checkpoint_head(tmp_path / "model.keras", {"head": retired}, asked)
        assert "-t NEW_FOLDER" in str(refused.value) and "not changed" in str(refused.value)
    result = run_cli("--head", retired, cwd=tmp_path)
    assert result.returncode == 2 and "--head" in result.stderr


def test_sequence_seconds_out_of_range_is_refused(tmp_path):
    result = run_cli("--sequence-seconds", "0.5", cwd=tmp_path)
    assert result.returncode == 2 and "--sequence-seconds" in result.stderr
    assert "Traceback" not in result.stderr
