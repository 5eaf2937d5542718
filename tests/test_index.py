"""The index by unit (MusicIndex): grains look for a jump's frame inside the unit a network drew,
or among the frames of the units that sound nearest what the jump joins, so that a step costs
the same on hours of music as on minutes. Where the choice is the same, the pieces are: checked
against the whole search as it was before the index, every frame of the music scored at every
step (WholeSearch below, the old code with the exact distances of the new). One change: a tie
goes to the recording. Before, a frame that sounds exactly as the recording's next one (a
digital loop's) tied with it (for the walk at cost 0) and won by coming first in the music,
and the jump to it started the copy guard's count afresh."""

import dataclasses

import numpy as np
import pytest

from conftest import melody, tone, write_int16


@pytest.fixture(scope="module")
def cache(mc, tmp_path_factory):
    """A melody, a chord, and a drum loop with a steady beat (so the beat rule has work)."""
    folder = tmp_path_factory.mktemp("index-music")
    (folder / "music").mkdir()
    write_int16(folder / "music" / "a.wav", melody(16.0, seed=3))
    chord = sum(tone(8.0, frequency, amplitude=0.2) for frequency in (261.6, 329.6, 392.0))
    write_int16(folder / "music" / "b.wav", chord)
    write_int16(folder / "music" / "c.wav", drums(12.0))
    return mc.prepare_cache(folder / "music", folder / "cache")


def drums(seconds, period=0.5, rate=44_100):
    rng = np.random.default_rng(5)
    audio = np.zeros(int(seconds * rate))
    hit = rng.normal(0, 0.4, 2000) * np.exp(-np.arange(2000) / 300)
    for start in np.arange(0.05, seconds - 0.1, period):
        at = int(start * rate)
        audio[at : at + 2000] += hit
    return audio + tone(seconds, 110.0, amplitude=0.1)


def whole_search(mc):
    """GrainSynthesis choosing as it did before the index (the previous commit's costs,
    no_return, keep_the_beat and within_a_unit, verbatim but for the exact distances)."""

    class WholeSearch(mc.GrainSynthesis):
        def distances(self, codes):  # (pieces, dimensions) -> (pieces, num_frames)
            return np.stack([mc.squared_distances(self.real.cache.codes, code) for code in codes])

        def choose_by_codes(self, predicted_codes):
            successors = self.real.successors(self.previous)
            prediction = np.zeros((len(self.previous), len(self.real.cache.codes)), np.float32) \
                if predicted_codes is None else self.distances(predicted_codes)
            cost, phase = self.costs(prediction, successors)
            return self.settle(ties_to_the_recording(cost, successors), successors, phase)

        def choose_by_units(self, chances):
            successors = self.real.successors(self.previous)
            zeros = np.zeros((len(self.previous), len(self.real.cache.codes)), np.float32)
            cost, phase = self.costs(zeros, successors)
            self.within_a_unit(cost, chances, successors)
            return self.settle(ties_to_the_recording(cost, successors), successors, phase)

        def costs(self, cost, successors):
            codes = self.real.cache.codes
            joined = np.where(successors >= 0, successors, self.previous)
            joins = self.distances(codes[np.maximum(joined, 0)])
            cost += mc.JOIN_WEIGHT * np.where((self.previous >= 0)[:, None], joins, 0)
            staying = np.flatnonzero(successors >= 0)
            kept = cost[staying, successors[staying]] * mc.STAY_WEIGHT
            cost *= self.real.level_cost
            if self.key is not None:  # a continuation's key rule, every frame scored
                cost *= 1 + mc.KEY_WEIGHT / 2 * (1 - self.key @ keys_around(mc, self.real.cache).T)
            cost[staying, successors[staying]] = kept
            cost[:, self.real.silent] = np.inf
            if self.forbidden is not None:
                cost[:, self.forbidden] = np.inf
            for piece, successor in enumerate(successors):
                if successor >= 0 and self.run[piece] >= self.limit:
                    cost[piece, around(self.real, successor, self.limit)] = np.inf
            self.no_return(cost, successors)
            phase = self.beat_reached()
            self.keep_the_beat(cost, phase, self.tempo, successors)
            return cost, phase

        def no_return(self, cost, successors):
            for piece, successor in enumerate(successors):
                played = self.recent[piece][self.recent[piece] >= 0]
                if not len(played):
                    continue
                ruled = cost[piece].copy()
                for frame in played:
                    ruled[around(self.real, frame, mc.RETURN_REACH)] = np.inf
                if successor >= 0:
                    ruled[successor] = cost[piece, successor]
                if np.isfinite(ruled).any():
                    cost[piece] = ruled

        def keep_the_beat(self, cost, phase, period, successors):
            beats = self.real.cache.beats
            for piece in np.flatnonzero(np.isfinite(phase)):
                apart = np.abs(np.mod(beats[:, 0] - phase[piece] + 0.5, 1.0) - 0.5)
                fits = (apart <= mc.BEAT_PHASE_TOLERANCE) \
                    & (np.abs(beats[:, 1] / period[piece] - 1) <= mc.TEMPO_TOLERANCE) \
                    | np.isnan(beats[:, 0])
                if successors[piece] >= 0:
                    fits[successors[piece]] = True
                ruled = np.where(fits, cost[piece], np.inf)
                if np.isfinite(ruled).any():
                    cost[piece] = ruled

        def within_a_unit(self, cost, chances, successors):
            """The recording goes on while allowed; else a unit drawn among those holding a
            frame within JOIN_SLACK of the best join's cost (every frame scored)."""
            unit_of, rng = self.index.unit_of, self.units.rng
            for piece, successor in enumerate(successors):
                if successor >= 0 and np.isfinite(cost[piece, successor]) \
                        and self.allowed(piece, successor):
                    cost[piece] = np.where(np.arange(cost.shape[1]) == successor, 0.0, np.inf)
                    continue
                if not np.isfinite(cost[piece]).any():
                    continue
                best = np.array([np.min(cost[piece][unit_of == unit], initial=np.inf)
                                 for unit in range(chances.shape[1])])
                good = best <= mc.JOIN_SLACK * np.min(cost[piece]) + 1e-6
                odds = np.where(good, np.asarray(chances[piece], np.float64), 0.0)
                odds = odds if odds.sum() > 0 else good.astype(np.float64)
                drawn = rng.choice(len(odds), p=odds / odds.sum())
                cost[piece] = np.where(unit_of == drawn, cost[piece], np.inf)

    return WholeSearch


def keys_around(mc, cache):
    """The key around each frame, frame by frame: its file's pitch classes within KEY_REACH
    of it, summed, each divided by the bins it holds, less their mean, at unit length."""
    reach, starts, chroma = mc.KEY_REACH, cache.file_starts, np.asarray(cache.chroma, np.float64)
    bins = mc.chroma_filters(cache.kind)[1].sum(axis=0)
    keys = np.zeros_like(chroma)
    for frame in range(len(chroma)):
        file = np.searchsorted(starts, frame, side="right") - 1
        key = chroma[max(starts[file], frame - reach) : min(starts[file + 1], frame + reach + 1)]
        key = key.sum(axis=0) / bins
        size, key = np.linalg.norm(key), key - key.mean()
        key = key if np.linalg.norm(key) > mc.KEY_LEAN_FLOOR * size else 0 * key
        keys[frame] = key / max(np.linalg.norm(key), 1e-12)
    return keys


def ties_to_the_recording(cost, successors):
    """argmin per piece, but the successor where its cost is the least (the one change)."""
    choices = np.argmin(cost, axis=1)
    kept = cost[np.arange(len(cost)), np.maximum(successors, 0)]
    ties = (successors >= 0) & np.isfinite(kept) & (kept == cost[np.arange(len(cost)), choices])
    return np.where(ties, successors, choices)


def around(real, index, reach):
    starts = real.cache.file_starts
    file = np.searchsorted(starts, index, side="right") - 1
    return slice(max(starts[file], index - reach), min(starts[file + 1], index + reach + 1))


def run_choices(mc, cache, kind, way, steps=60, pieces=3, copy_limit=1.0, units=12):
    """The frames a synthesis class chooses, `pieces` pieces from fixed seeds, steered `way`:
    'units' (chances of units drawn from a fixed generator), 'walk' or 'codes' (the codes of
    random frames of the music, as a frame-predicting network's)."""
    real = mc.RealFrames(cache, cache.normalisation)
    synthesis = kind(real, pieces, copy_limit)
    centroids = mc.music_units(cache.codes, units)
    synthesis.index = mc.MusicIndex(mc.unit_labels(cache.codes, centroids), centroids)
    synthesis.units = mc.UnitSteering(np.random.default_rng(1)) if way == "units" else None
    starts = np.array([3, int(cache.file_starts[1]) + 2, int(cache.file_starts[2]) + 4])[:pieces]
    synthesis.prime(cache.normalisation.denormalise(np.asarray(cache.frames)[starts][:, None]))
    wanted = np.random.default_rng(2)
    for _ in range(steps):
        if way == "units":
            chances = wanted.dirichlet(np.full(units, 0.3), size=pieces)
            synthesis.choose_by_units(chances)
        elif way == "walk":
            synthesis.choose_by_codes(None)
        else:
            synthesis.choose_by_codes(np.asarray(cache.codes)[wanted.integers(len(cache.codes),
                                                                              size=pieces)])
    return np.array([choice for choice, _, _ in synthesis.chosen])  # (steps, pieces)


@pytest.mark.parametrize("way", ["units", "walk", "codes"])
@pytest.mark.parametrize("copy_limit", [0.5, 2.0])
def test_the_index_chooses_as_the_whole_search_did(mc, cache, way, copy_limit):
    """On music searched whole (fewer frames than WALK_CANDIDATES), every choice of a units
    network, the walk and a frame-predicting network is the whole search's, jumps, beat rule,
    cycle rule and copy guard and all; and there are jumps enough for that to mean something."""
    assert len(cache.codes) <= mc.WALK_CANDIDATES and np.isfinite(cache.beats[:, 0]).any()
    indexed = run_choices(mc, cache, mc.GrainSynthesis, way, copy_limit=copy_limit)
    whole = run_choices(mc, cache, whole_search(mc), way, copy_limit=copy_limit)
    np.testing.assert_array_equal(indexed, whole)
    jumps = np.sum(indexed[1:] != indexed[:-1] + 1)
    assert jumps >= 20


@pytest.mark.parametrize("way", ["units", "walk"])
def test_where_the_rules_give_way_the_index_chooses_as_the_whole_search_did(mc, cache, way):
    """Music all on a beat at one tempo, pieces at another (a continuation of a seed at another
    tempo): the beat rule leaves no frame, gives way, and the choices are still the whole
    search's, inside the unit drawn where it has a frame."""
    beats = np.stack([np.mod(np.arange(len(cache.codes)) * 0.5, 1.0),
                      np.full(len(cache.codes), 0.5)], axis=1).astype(np.float32)
    on_a_beat = dataclasses.replace(cache, beats=beats)

    def chosen(kind):
        original = mc.GrainSynthesis.beat_reached

        def other_tempo(self):
            self.tempo[:] = 0.37
            return original(self)

        try:
            mc.GrainSynthesis.beat_reached = other_tempo
            return run_choices(mc, on_a_beat, kind, way, copy_limit=0.5)
        finally:
            mc.GrainSynthesis.beat_reached = original

    indexed = chosen(mc.GrainSynthesis)
    np.testing.assert_array_equal(indexed, chosen(whole_search(mc)))
    assert np.sum(indexed[1:] != indexed[:-1] + 1) >= 20


def test_a_continuation_chooses_as_the_whole_search_did(mc, cache):
    """With the seeds' recordings among the music (never chosen), the same."""
    ranges = [(int(cache.file_starts[1]) - 20, int(cache.file_starts[1]))]

    def chosen(kind):
        real = mc.RealFrames(cache, cache.normalisation)
        synthesis = kind(real, 1, 1.0, ranges)
        centroids = mc.music_units(cache.codes, 12)
        synthesis.index = mc.MusicIndex(mc.unit_labels(cache.codes, centroids), centroids)
        seed = np.asarray(cache.frames[ranges[0][0] : ranges[0][1]])
        synthesis.prime(cache.normalisation.denormalise(seed)[None])
        assert synthesis.key is not None  # a continuation keeps to its seed's key
        synthesis.prime_with_audio(np.zeros((1, mc.WINDOW_SIZE), np.float32))
        for _ in range(40):
            synthesis.choose_by_codes(None)
        return np.array([choice for choice, _, _ in synthesis.chosen])

    indexed = chosen(mc.GrainSynthesis)
    np.testing.assert_array_equal(indexed, chosen(whole_search(mc)))
    assert not ((indexed >= ranges[0][0]) & (indexed < ranges[0][1])).any()


def test_on_long_music_a_jump_looks_near_what_it_joins(mc, cache, monkeypatch):
    """Music of more frames than WALK_CANDIDATES: a jump scores only the frames of the units
    nearest what it joins (at least WALK_CANDIDATES, not all the music), and the best join
    found there is the whole search's in most jumps."""
    monkeypatch.setattr(mc, "WALK_CANDIDATES", len(cache.codes) // 6)
    centroids = mc.music_units(cache.codes, 24)
    index = mc.MusicIndex(mc.unit_labels(cache.codes, centroids), centroids)
    largest = max(index.sizes)
    for frame in range(0, len(cache.codes), 7):
        near = index.near(cache.codes[frame])
        assert mc.WALK_CANDIDATES <= len(near) < mc.WALK_CANDIDATES + largest
        assert np.all(np.diff(near) > 0) and index.unit_of[frame] in set(index.unit_of[near])
    indexed = run_choices(mc, cache, mc.GrainSynthesis, "walk", copy_limit=0.5, units=24)
    whole = run_choices(mc, cache, whole_search(mc), "walk", copy_limit=0.5, units=24)
    assert np.mean(indexed == whole) >= 0.6, np.mean(indexed == whole)


def test_the_walk_indexes_long_music_and_searches_short_music_whole(mc, cache, monkeypatch):
    real = mc.RealFrames(cache, cache.normalisation)
    for candidates, indexed in ((mc.WALK_CANDIDATES, False), (len(cache.codes) // 4, True)):
        monkeypatch.setattr(mc, "WALK_CANDIDATES", candidates)
        synthesis = mc.make_synthesis("magnitude", 1, "grains", real)
        mc.JoinAlone(cache.normalisation).predict_next(None, synthesis, cache, 1, None)
        assert (synthesis.index is not None) == indexed


def test_the_key_around_a_frame_is_its_file_s_music_near_it(mc, cache):
    """local_keys, read frame by frame (keys_around): the pitch classes within KEY_REACH in the
    frame's own file, never across a file's start; the melody (A major) and the chord (C major)
    lean different ways."""
    keys = mc.local_keys(cache.chroma, cache.file_starts, cache.kind)
    np.testing.assert_allclose(keys, keys_around(mc, cache), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(keys, axis=1), 1, atol=1e-5)
    starts = cache.file_starts
    melody, chord = keys[starts[0] : starts[1]], keys[starts[1] : starts[2]]
    assert np.median(melody @ melody.mean(axis=0)) > 0.5 > np.max(chord @ melody.mean(axis=0))
