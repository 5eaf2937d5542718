"""The walk (--steer join): grains chosen by the join alone, with no network. It is the
network's path less one term, the control every quality figure is read against, and it runs
from the cache with no trained model."""

import json

import numpy as np
import pytest
from scipy.io import wavfile

from conftest import melody, run_cli, tone, write_int16

RATE = 44_100


@pytest.fixture(scope="module")
def music(tmp_path_factory):
    folder = tmp_path_factory.mktemp("walk-music")
    (folder / "music").mkdir()
    write_int16(folder / "music" / "a.wav", melody(14.0, seed=3))
    chord = sum(tone(7.0, frequency, amplitude=0.2) for frequency in (261.6, 329.6, 392.0))
    write_int16(folder / "music" / "b.wav", chord)
    return folder


@pytest.fixture(scope="module")
def cache(mc, music):
    return mc.prepare_cache(music / "music", music / "cache")


def choices(mc, cache, predict_next, frames=24, copy_limit=1.0, start=3):
    """The frames GrainSynthesis chooses, one piece, from a clip at `start`, steered by
    predict_next (network-normalised frames in, predictions out; None: no prediction), or
    by what predict_next(synthesis) returns where it is a SuccessorOfLastChoice."""
    real = mc.RealFrames(cache, cache.normalisation)
    synthesis = mc.make_synthesis("magnitude", 1, "grains", real, copy_limit)
    if isinstance(predict_next, SuccessorOfLastChoice):
        predict_next = predict_next(synthesis)
    seed = np.asarray(cache.frames[None, start : start + mc.WINDOW_FRAMES])
    synthesis.prime(cache.normalisation.denormalise(seed))
    chosen = []
    steered = synthesis.steer(predict_next)
    frame = steered(seed)
    for _ in range(frames):
        chosen.append(int(synthesis.chosen.popleft()[0][0]))
        frame = steered(frame)
    return chosen


class SuccessorOfLastChoice:
    """A network that predicts exactly what the walk prefers: the real successor of the last
    choice (that frame itself where its file ends), read from the synthesis that made it."""

    def __call__(self, synthesis):
        def predict_next(frames):
            fed = synthesis.previous
            following = synthesis.real.successors(fed)
            return synthesis.real.for_network(np.where(following >= 0, following, fed))

        return predict_next


def test_the_walk_is_the_networks_path_less_the_prediction_term(mc, cache):
    """A known case: a prediction that is always the successor of the last choice adds to each
    frame's cost (1 + JOIN_WEIGHT) / JOIN_WEIGHT times its join term, which changes no argmin:
    its path is the walk's, jump for jump. A prediction that points elsewhere changes the path,
    so the comparison can fail."""
    walk = choices(mc, cache, lambda frames: None)
    network = choices(mc, cache, SuccessorOfLastChoice())
    assert network == walk  # ties (the test melody repeats exactly) go to the recording in both
    elsewhere = mc.RealFrames(cache, cache.normalisation).for_network(
        np.array([len(cache.frames) - 3]))  # a frame of the held chord
    assert choices(mc, cache, lambda frames: elsewhere) != walk


def test_the_walk_follows_the_recording_up_to_the_copy_guard_then_joins_best(mc, cache):
    """No network: the recording goes on frame by frame, and after copy_limit seconds it jumps,
    never back into the stretch it was copying, to a frame that joins as well as any allowed."""
    walk = choices(mc, cache, lambda frames: None, frames=30, copy_limit=1.0)
    figures = mc.copy_figures(walk, cache.file_starts)
    assert figures["longest_verbatim_s"] == 1.0  # 4 frames, then the guard
    runs = mc.verbatim_stretches(walk, cache.file_starts)
    # Every stretch runs to the guard, bar the last, and one that reaches its file's end (the
    # cycle rule can leave nothing better in music this short).
    ends = np.cumsum(runs)[:-1] - 1  # where each stretch but the last ends, in `walk`
    for run, end in zip(runs[:-1], ends):
        assert run == 4 or walk[end] + 1 in cache.file_starts
    assert (runs == 4).sum() >= len(runs) - 3
    for before, after in zip(walk, walk[1:]):
        if after != before + 1:
            assert abs(after - (before + 1)) > 4  # out of the guarded stretch


def test_the_walk_through_the_command_line_needs_no_model(mc, music, tmp_path):
    """--steer join writes pieces from the cache alone: no model is trained or written, a
    model already there is left as it is, and each piece's report says how much was copied."""
    traindata = tmp_path / "traindata"
    done = run_cli("-d", music / "music", "-t", traindata, "-o", tmp_path / "walk", "-g", "2",
                   "-s", "6", "--steer", "join", "--copy-limit", "2", "--random-seed", "3",
                   "--no-plots", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "no network is trained or read" in done.stdout
    assert not list(traindata.glob("*.keras"))
    for index in range(2):
        rate, samples = wavfile.read(tmp_path / f"walk-{index}.wav")
        assert rate == RATE and len(samples) == 6 * RATE
        assert np.abs(samples).max() > 1000  # music, not silence
        report = json.loads((tmp_path / f"walk-{index}.json").read_text())
        assert report["longest_verbatim_s"] <= 2.0
    again = run_cli("-d", music / "music", "-t", traindata, "-o", tmp_path / "again", "-g", "2",
                    "-s", "6", "--steer", "join", "--copy-limit", "2", "--random-seed", "3",
                    "--no-plots", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert ((tmp_path / "again-1.wav").read_bytes()
            == (tmp_path / "walk-1.wav").read_bytes())  # repeatable with --random-seed


def test_the_walk_refuses_spectra_with_a_message(music, tmp_path):
    refused = run_cli("-d", music / "music", "-t", tmp_path / "t", "--steer", "join",
                      "--synthesis", "spectra", cwd=tmp_path)
    assert refused.returncode == 2
    assert "--steer join" in refused.stderr and "Traceback" not in refused.stderr


def most_plays_within(chosen, frames=16):
    """The most times one frame is played within any `frames` consecutive choices."""
    chosen = list(chosen)
    return max(max(window.count(frame) for frame in window)
               for window in (chosen[start : start + frames]
                              for start in range(max(len(chosen) - frames + 1, 1))))


def test_the_walk_does_not_step_back_and_forth(mc, cache):
    """The walk at a 0.25-s guard must jump at every block, and the frame that joins a frame
    best is its neighbour: without the cycle rule it stepped back and forth over a few frames.
    With it, no frame is played twice within 4 s; and ruled out entirely, the same walk loops
    (the test can fail)."""
    walk = choices(mc, cache, lambda frames: None, frames=40, copy_limit=0.25)
    assert most_plays_within(walk) == 1
    original = mc.GrainSynthesis.returning
    try:
        mc.GrainSynthesis.returning = lambda self, piece, successor, candidates: np.zeros(
            len(candidates), bool)
        looping = choices(mc, cache, lambda frames: None, frames=40, copy_limit=0.25)
    finally:
        mc.GrainSynthesis.returning = original
    assert most_plays_within(looping) > 2


def test_a_walk_continuation_moves_and_leaves_its_seed(music, tmp_path):
    """--steer join --seed-wav: the continuation goes on into the music (none of it from the
    seed's own recording), moves as the music does, and no frame of it is played more than
    once in 4 s."""
    seed = write_int16(tmp_path / "seed.wav", melody(12.0, seed=9))
    done = run_cli("-d", music / "music", "-t", tmp_path / "t", "-o", tmp_path / "go", "-s", "20",
                   "--steer", "join", "--seed-wav", seed, "--random-seed", "1", "--no-plots",
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "go-0.json").read_text())
    assert report["seed_share"] <= 0.5 and report["movement"] >= 0.7
    assert "hardly moves" not in done.stdout
