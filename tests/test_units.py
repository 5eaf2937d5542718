"""The units head (--head units): the music's frames clustered into units of sound, a network
that predicts the next frame's unit, and grains that sample a unit and play a frame of it."""

import json
import zipfile

import numpy as np
import pytest

from conftest import melody, run_cli, tone, write_int16


def test_units_are_the_clusters_of_the_index_numbers(mc):
    """Three clear clusters are found as three units, every point labelled with its own, the
    same way each time; asked for more units than a quarter of the frames, fewer are made."""
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], np.float32)
    truth = rng.integers(3, size=300)
    codes = (centres[truth] + rng.normal(0, 0.5, (300, 2))).astype(np.float32)
    centroids = mc.music_units(codes, 3)
    labels = mc.unit_labels(codes, centroids)
    # Each true cluster maps to one unit, and different clusters to different units.
    mapping = {int(t): set(labels[truth == t].tolist()) for t in range(3)}
    assert all(len(units) == 1 for units in mapping.values())
    assert len(set.union(*mapping.values())) == 3
    np.testing.assert_array_equal(centroids, mc.music_units(codes, 3))  # seeded
    assert len(mc.music_units(codes[:20], 256)) == 5  # at most a quarter of the frames


def test_the_number_of_units_grows_with_the_music(mc):
    """One unit for every 30 frames, at least 32 and at most 256: 8 minutes of music (1 920
    frames) get 64, an hour 256, a minute 32."""
    assert mc.units_for(1920) == 64
    assert mc.units_for(4 * 60 * 60) == 256 and mc.units_for(240) == 32


def test_a_units_batch_has_the_next_frames_units_as_targets(mc):
    frames = np.arange(40 * 3, dtype=np.float32).reshape(40, 3)
    labels = (np.arange(40) * 7 % 5).astype(np.int32)
    batches = mc.make_batches(frames, np.array([0, 10, 20]), 3, np.random.default_rng(0),
                              shuffle=False, length=4, labels=labels)
    inputs, targets = batches[0]
    assert inputs.shape == (3, 4, 3) and targets.shape == (3, 4)
    for row, start in enumerate([0, 10, 20]):
        np.testing.assert_array_equal(inputs[row], frames[start : start + 4])
        np.testing.assert_array_equal(targets[row], labels[start + 1 : start + 5])


def test_counting_scores_the_held_out_steps_as_val_loss_does(mc):
    """Units that go 0, 1, 2, 0, 1, 2, ...: the bigram knows the next unit (its loss is that of
    the 0.7 * (1 + 0.1) / (1 + 0.3) + 0.3 / 3 it gives the right one), the unigram does not
    (log 3, near enough), nothing stays; the training part's counts make the bigram, the
    held-out steps (every step of every validation sequence, as val_loss) score it."""
    labels = (np.arange(200) % 3).astype(np.int32)
    train, held_out = np.arange(0, 150, 2), np.arange(160, 190, 3)
    counting, bigram = mc.unit_counting(labels, train, held_out, length=8, units=3)
    right = 0.7 * (1 + 0.1 / counting_count(labels, train, 8)) / (1 + 0.3 / counting_count(
        labels, train, 8)) + 0.3 * (1 / 3)
    assert counting["bigram"] == pytest.approx(-np.log(right), rel=0.02)
    assert counting["unigram"] == pytest.approx(np.log(3), abs=0.01)
    assert counting["uniform"] == pytest.approx(np.log(3)) and counting["stay"] == 0.0
    # A held part where the unit never changes: every step stays, and the bigram, counted on
    # music that always moves on, is surprised.
    steady = labels.copy()
    steady[160:] = 1
    surprised, _ = mc.unit_counting(steady, train, held_out, length=8, units=3)
    assert surprised["stay"] == 1.0 and surprised["bigram"] > counting["unigram"]


def counting_count(labels, train, length):  # how often each unit follows each in training
    frames = np.unique(train[:, None] + np.arange(length))
    return len(frames) / 3


def test_the_held_out_line_says_which_way_the_network_stands(mc):
    metadata = {"counting": {"bigram": 2.0, "unigram": 3.0, "uniform": 4.0, "stay": 0.5},
                "history": [{"epoch": 1, "loss": 3.0, "val_loss": 2.5},
                            {"epoch": 2, "loss": 2.0, "val_loss": 1.9}]}
    line = mc.held_out_prediction(metadata)
    assert "1.90 nats after epoch 2 (best 1.90, epoch 2)" in line and "better than" in line
    metadata["history"].append({"epoch": 3, "loss": 1.0, "val_loss": 2.2})
    assert "not yet as good as" in mc.held_out_prediction(metadata)
    assert mc.held_out_prediction({"history": metadata["history"]}) is None  # frames head


def prior_model(mc, features=10, units=4, dimensions=3, seed=0):
    """A tiny units model whose logits go on from counting's: (model, its prior's weights)."""
    rng = np.random.default_rng(seed)
    centroids = rng.normal(0, 3, (units, dimensions)).astype(np.float32)
    model = mc.build_model(features, 6, 2, mc.UnitsHead(units, centroids))
    weights = [rng.normal(size=(features, dimensions)).astype(np.float32), centroids,
               np.log(rng.dirichlet(np.ones(units), units)).astype(np.float32)]
    mc.unit_prior_of(model).set_weights(weights)
    return model, weights


def test_the_prior_gives_counting_s_chances_after_each_frame_s_unit(mc):
    """UnitPrior's logits are log p(next unit | the frame's unit), the unit found as the cache
    finds it; the network's own logits are added to them, and its weights are not trained."""
    model, (components, centroids, log_bigram) = prior_model(mc)
    frames = np.random.default_rng(1).normal(size=(2, 5, 10)).astype(np.float32)
    units = mc.unit_labels(frames.reshape(-1, 10) @ components, centroids).reshape(2, 5)
    assert len(set(units.ravel())) > 1  # the frames fall in several units
    prior = mc.unit_prior_of(model)
    np.testing.assert_allclose(np.asarray(prior(frames)), log_bigram[units], rtol=1e-6)
    assert not prior.trainable_weights
    without = mc.build_model(10, 6, 2, mc.UnitsHead(4, centroids, prior=False))
    for layer in without.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    np.testing.assert_allclose(model(frames).numpy(), without(frames).numpy()
                               + log_bigram[units], rtol=1e-5, atol=1e-5)
    assert mc.head_of(model).prior and not mc.head_of(without).prior


def test_generation_steps_add_the_prior_as_the_model_does(mc):
    model, _ = prior_model(mc, seed=2)
    sequence = np.random.default_rng(3).normal(size=(3, 7, 10)).astype(np.float32)
    full = model(sequence).numpy()
    predict_next = mc.make_step_function(model, 3, mc.compile_step(model, "float32"))
    steps = np.stack([predict_next(sequence[:, t]) for t in range(7)], axis=1)
    np.testing.assert_allclose(steps, full, atol=1e-5 * np.abs(full).max())
    at_once = mc.make_step_function(model, 3, mc.compile_step(model, "float32"))
    np.testing.assert_allclose(at_once(sequence), full[:, -1], atol=1e-5 * np.abs(full).max())


@pytest.fixture(scope="module")
def cache(mc, tmp_path_factory):
    folder = tmp_path_factory.mktemp("units-music")
    (folder / "music").mkdir()
    write_int16(folder / "music" / "a.wav", melody(14.0, seed=3))
    chord = sum(tone(7.0, frequency, amplitude=0.2) for frequency in (261.6, 329.6, 392.0))
    write_int16(folder / "music" / "b.wav", chord)
    return mc.prepare_cache(folder / "music", folder / "cache")


def unit_choices(mc, cache, chances_of, frames=24, copy_limit=2.0, start=3):
    """The frames chosen for one piece when the network gives these chances of the units
    (chances_of(unit_of) -> (units,); None: the walk, no network); and each frame's unit."""
    real = mc.RealFrames(cache, cache.normalisation)
    synthesis = mc.make_synthesis("magnitude", 1, "grains", real, copy_limit)
    centroids = mc.music_units(cache.codes, 8)
    unit_of = mc.unit_labels(cache.codes, centroids)
    synthesis.index = mc.MusicIndex(unit_of, centroids)
    if chances_of is not None:
        synthesis.units = mc.UnitSteering(np.random.default_rng(0))
    seed = np.asarray(cache.frames[None, start : start + mc.WINDOW_FRAMES])
    synthesis.prime(cache.normalisation.denormalise(seed))
    steered = synthesis.steer(lambda frames: None if chances_of is None
                              else chances_of(unit_of, len(centroids))[None])
    frame, chosen = steered(seed), []
    for _ in range(frames):
        chosen.append(int(synthesis.chosen.popleft()[0][0]))
        frame = steered(frame)
    return chosen, unit_of


def test_grains_keep_the_recording_to_the_guard_and_draw_among_units_that_can_follow(
        mc, cache, monkeypatch):
    """Whatever the network's chances, the recording goes on to the copy guard. Where the guard
    ends it, the unit is drawn among those that can follow: with no bound on the join
    (JOIN_SLACK infinite) every jump lands in the one unit given all the chance, though the
    recording is not in it; with JOIN_SLACK 1 only units holding the best join can follow, and
    the piece is the walk's, frame for frame."""
    everywhere, unit_of = unit_choices(mc, cache, lambda unit_of, count: np.full(count, 1 / count))
    runs = mc.verbatim_stretches(everywhere, cache.file_starts)
    ends = np.cumsum(runs)[:-1] - 1  # where each run but the last stopped
    last_frames = set(cache.file_starts[1:] - 1)  # a file's end stops a run too
    assert len(runs) >= 3 and all(run == 8 or everywhere[end] in last_frames
                                  for run, end in zip(runs[:-1], ends))  # 2 s, to the guard
    assert sum(run == 8 for run in runs[:-1]) >= 2
    target = int(unit_of[len(cache.frames) - 3])  # the held chord's unit
    assert unit_of[3] != target

    def one_unit(unit_of, count):
        chances = np.full(count, 1e-9)
        chances[target] = 1.0
        return chances / chances.sum()

    monkeypatch.setattr(mc, "JOIN_SLACK", np.inf)
    there, _ = unit_choices(mc, cache, one_unit)
    assert mc.verbatim_stretches(there, cache.file_starts)[0] == 8  # on to the guard
    jumps = [after for before, after in zip([3 + mc.WINDOW_FRAMES - 1] + there, there)
             if after != before + 1]
    assert len(jumps) >= 2 and all(unit_of[frame] == target for frame in jumps)

    monkeypatch.setattr(mc, "JOIN_SLACK", 1.0)
    joined, _ = unit_choices(mc, cache, one_unit)
    walked, _ = unit_choices(mc, cache, None)
    assert joined == walked and any(unit_of[frame] != target for frame in joined)


def test_a_units_model_through_the_command_line(mc, tmp_path):
    """A new model predicts units by default (grains), the checkpoint keeps its units and
    generation plays grains from it; spectra are refused before any work, with a message that
    says how to get a model of spectra, and a new model trained for spectra predicts frames."""
    music = tmp_path / "music"
    music.mkdir()
    write_int16(music / "a.wav", melody(16.0, seed=4))
    flags = ["-d", music, "-t", tmp_path / "t", "-n", "8", "-l", "1", "-g", "2", "-s", "3",
             "--random-seed", "2", "--no-plots"]
    trained = run_cli(*flags, "-e", "1", "-o", tmp_path / "u", cwd=tmp_path)  # no --head
    assert trained.returncode == 0, trained.stderr
    assert "units of sound" in trained.stdout
    assert "Held-out music" in trained.stdout and "bigram" in trained.stdout
    with zipfile.ZipFile(tmp_path / "t" / "model.keras") as archive:
        metadata = json.loads(archive.read(mc.CHECKPOINT_METADATA))
    assert metadata["head"] == "units"
    units = np.array(metadata["units"])  # (units, the index's dimensions: at most 64)
    assert units.shape[0] == metadata["head_components"] and units.shape[1] <= 64
    model = mc.load_checkpoint_model(tmp_path / "t" / "model.keras")
    assert mc.head_of(model).name == "units" and mc.head_of(model).prior
    # The prior saved is counting's on this music: each row a distribution over the units.
    log_bigram = mc.unit_prior_of(model).get_weights()[2]
    np.testing.assert_allclose(np.exp(log_bigram).sum(axis=1), 1.0, rtol=1e-5)
    assert model.get_layer("project_out").units == metadata["head_components"]
    counting = metadata["counting"]
    assert counting["uniform"] == pytest.approx(np.log(len(units)))
    assert counting["bigram"] > 0 and counting["unigram"] > 0 and 0 <= counting["stay"] <= 1
    again = run_cli(*flags, "-e", "0", "-o", tmp_path / "again", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"bigram {counting['bigram']:.2f}" in again.stdout  # -e 0 says it from the checkpoint
    report = json.loads((tmp_path / "again-0.json").read_text())
    assert report["seconds"] == 3 and report["longest_verbatim_s"] <= 4.0
    refused = run_cli(*flags, "-e", "0", "--synthesis", "spectra", "-o", tmp_path / "s",
                      cwd=tmp_path)
    assert refused.returncode == 1 and "only grains can play" in refused.stderr
    assert "-t OTHER_FOLDER --synthesis spectra" in refused.stderr
    spectra = run_cli(*flags[:2], "-t", tmp_path / "spectra", *flags[4:], "-e", "1",
                      "--synthesis", "spectra", "-o", tmp_path / "sp", cwd=tmp_path)
    assert spectra.returncode == 0, spectra.stderr
    with zipfile.ZipFile(tmp_path / "spectra" / "model.keras") as archive:
        assert json.loads(archive.read(mc.CHECKPOINT_METADATA))["head"] == "average"
    assert len(list(tmp_path.glob("sp-*.wav"))) == 2
    assert "Traceback" not in refused.stderr and not list(tmp_path.glob("s-*.wav"))


def test_a_units_network_generates_from_its_best_epoch(mc, tmp_path):
    """Of two epochs, the one whose held-out loss is lower generates (model-best.keras), where it
    is of the same training as the last; a best checkpoint of other music, or a network of
    frames, generates from the last epoch."""
    music = tmp_path / "music"
    music.mkdir()
    write_int16(music / "a.wav", melody(16.0, seed=4))
    flags = ["-d", music, "-t", tmp_path / "t", "-n", "8", "-l", "1", "-g", "1", "-s", "2",
             "--random-seed", "2", "--no-plots"]
    trained = run_cli(*flags, "-e", "2", "-o", tmp_path / "u", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    last, _, _ = mc.read_checkpoint_metadata(tmp_path / "t" / mc.CHECKPOINT_NAME)
    best = min(last["history"], key=lambda entry: entry["val_loss"])["epoch"]
    chosen = mc.generating_checkpoint(tmp_path / "t")
    assert mc.read_checkpoint_metadata(chosen)[0]["epochs_done"] == best
    assert chosen.name == mc.BEST_CHECKPOINT_NAME
    again = run_cli(*flags, "-e", "0", "-o", tmp_path / "again", cwd=tmp_path)
    assert again.returncode == 0 and f"Generating from {chosen}" in again.stdout
    # The best checkpoint of other music is not taken.
    import shutil
    import zipfile

    other = tmp_path / "other.keras"
    with zipfile.ZipFile(tmp_path / "t" / mc.BEST_CHECKPOINT_NAME) as source, \
            zipfile.ZipFile(other, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename == mc.CHECKPOINT_METADATA:
                data = json.dumps({**json.loads(data), "cache_fingerprint": "elsewhere"})
            target.writestr(item, data)
    shutil.move(other, tmp_path / "t" / mc.BEST_CHECKPOINT_NAME)
    assert mc.generating_checkpoint(tmp_path / "t").name == mc.CHECKPOINT_NAME
