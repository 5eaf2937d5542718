"""The judge of tests/quality.py (can stretches of the pieces be told from the music?), tested
on controls whose answers are known before it judges anything: music of the same kind is not
told apart, noise is; and folds grouped by piece do not let it tell pieces by their own sound."""

import numpy as np
import pytest

import quality
from conftest import write_int16

RATE = 44_100


def song(seconds, root, seed):
    """A melody over a chord on `root` (Hz), notes every quarter second, a timbre that goes with
    the root: each song has a sound of its own, all songs are of one kind."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    chord = sum(0.08 * np.sin(2 * np.pi * root * ratio * t) for ratio in (1.0, 1.26, 1.5))
    notes = root * 2 * rng.choice([1.0, 1.12, 1.26, 1.33, 1.5], size=int(seconds * 4) + 1)
    phase = 2 * np.pi * notes[(t * 4).astype(int)] * t
    lead = 0.2 * np.sin(phase) + 0.1 * (root / 300) * np.sin(2 * phase)
    return (chord + lead).astype(np.float32)


@pytest.fixture(scope="module")
def music_folder(tmp_path_factory):
    """Six files of training music, each on its own root."""
    folder = tmp_path_factory.mktemp("music")
    for index, root in enumerate((196.0, 220.0, 247.0, 262.0, 294.0, 330.0)):
        write_int16(folder / f"song-{index}.wav", song(40.0, root, seed=index))
    return folder


def test_music_of_the_same_kind_is_not_told_apart_and_noise_is(mc, music_folder):
    new_songs = [song(30.0, root, seed=100 + index)
                 for index, root in enumerate((208.0, 233.0, 277.0, 311.0, 185.0))]
    noise = [(0.1 * np.random.default_rng(index).standard_normal(30 * RATE)).astype(np.float32)
             for index in range(5)]
    assert quality.told_apart(mc, new_songs, music_folder) < 0.7
    assert quality.told_apart(mc, noise, music_folder) > 0.95


def test_grouped_folds_do_not_tell_new_pieces_by_their_own_sound(mc, music_folder):
    """Pieces of the music's kind, each with a sound of its own: split stretch by stretch, the
    classifier learns each piece's own sound and tells them apart; grouped by piece, it must
    tell an unheard piece, and cannot."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    new_songs = [song(30.0, root, seed=200 + index)
                 for index, root in enumerate((208.0, 233.0, 277.0, 311.0, 185.0))]
    pieces, piece_groups = quality.piece_stretches(mc, new_songs)
    music, music_groups = quality.music_stretches(mc, music_folder, len(pieces))
    assert len(set(piece_groups)) == 5 and len(set(music_groups)) == 6  # by piece, by file
    features = np.concatenate([pieces, music])
    labels = np.r_[np.ones(len(pieces)), np.zeros(len(music))]
    ungrouped = np.mean(cross_val_score(RandomForestClassifier(200, random_state=0), features,
                                        labels, cv=StratifiedKFold(5, shuffle=True,
                                                                   random_state=0)))
    grouped = quality.grouped_told_apart(pieces, piece_groups, music, music_groups)
    assert ungrouped > 0.85
    assert grouped < ungrouped - 0.2 and grouped < 0.75


def test_one_file_of_music_is_grouped_by_spans_and_the_held_out_piece_by_its_parts(mc, tmp_path):
    write_int16(tmp_path / "only.wav", song(150.0, 220.0, seed=1))
    _, groups = quality.music_stretches(mc, tmp_path, 40)
    assert len(set(groups)) == 5  # five 30-s spans of the one file
    parts = quality.held_out_parts(song(35.0, 220.0, seed=2))
    assert [len(part) for part in parts] == [10 * RATE] * 3
    # Too few pieces to fold: no figure rather than a made-up one.
    one_piece, one_group = quality.piece_stretches(mc, parts[:1])
    music, music_groups = quality.music_stretches(mc, tmp_path, len(one_piece))
    assert np.isnan(quality.grouped_told_apart(one_piece, one_group, music, music_groups))


def found_in(excerpt, files, tolerance=1e-4):
    """Whether `excerpt` is a stretch of one of `files`, sample for sample."""
    for whole in files:
        last = len(whole) - len(excerpt) + 1
        starts = np.flatnonzero((np.abs(whole[:last] - excerpt[0]) < tolerance)
                                & (np.abs(whole[1 : last + 1] - excerpt[1]) < tolerance)
                                & (np.abs(whole[2 : last + 2] - excerpt[2]) < tolerance))
        if any(np.max(np.abs(whole[start : start + len(excerpt)] - excerpt)) < tolerance
               for start in starts):
            return True
    return False


def test_excerpts_of_the_music_are_measured_as_pieces_and_pass_for_it(mc, music_folder, tmp_path):
    """The control beside every frontier row: excerpts of the training music itself, cut where
    a seeded generator says, written as WAVs and measured as a piece is. Each is a stretch of one
    training file, sample for sample (to 16-bit rounding); the judge does not tell them from the
    music; noise measured the same way is far from it."""
    reference = mc.prepare_cache(music_folder, tmp_path / "train_data", "magnitude").reference
    reports = quality.music_excerpts(mc, music_folder, tmp_path / "run", reference, 6)
    files = [mc.read_wav(path)[0] for path in sorted(music_folder.glob("*.wav"))]
    excerpts = [mc.read_wav(tmp_path / "run" / report["file"])[0] for report in reports]
    assert [len(excerpt) for excerpt in excerpts] == [30 * RATE] * 6
    assert all(found_in(excerpt, files) for excerpt in excerpts)
    assert quality.music_excerpts(mc, music_folder, tmp_path / "again", reference, 6) == reports
    noise = (0.1 * np.random.default_rng(0).standard_normal(30 * RATE)).astype(np.float32)
    noise_distance = mc.measure_piece(noise, reference)["spectral_distance"]
    assert max(report["spectral_distance"] for report in reports) < 0.1 * noise_distance
    assert quality.told_apart(mc, excerpts, music_folder) < 0.7
