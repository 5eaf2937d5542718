"""The frame cache: built once, reused, rebuilt when the music changes, never trusted half-written."""

import hashlib
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import SCRIPT, melody, tone, write_int16


@pytest.fixture
def music(tmp_path):
    folder = tmp_path / "music"
    folder.mkdir()
    write_int16(folder / "a.wav", melody(3.0, seed=1))
    write_int16(folder / "b.wav", tone(2.1, 330.0))
    return folder


def snapshot(folder):
    """Every file's name, bytes and modification time: to prove the music is never touched."""
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.iterdir()) if p.is_file()}


def expected_frames(mc, paths, kind):
    """The normalised frames computed afresh, without the cache."""
    frames = [mc.frames_from_audio(mc.read_wav(p)[0], kind) for p in paths]
    everything = np.concatenate(frames).astype(np.float64)
    mean, std = everything.mean(axis=0), np.maximum(everything.std(axis=0), mc.STD_FLOOR)
    return (everything - mean) / std, [len(f) for f in frames]


@pytest.mark.parametrize("kind", ["magnitude", "plain"])
def test_cache_equals_frames_computed_fresh(mc, music, tmp_path, kind):
    cache = mc.prepare_cache(music, tmp_path / "cache", kind)
    assert cache.kind == kind
    expected, lengths = expected_frames(mc, [music / "a.wav", music / "b.wav"], kind)
    assert isinstance(cache.frames, np.memmap)  # read lazily, never loaded whole
    assert cache.frames.dtype == np.float32
    np.testing.assert_allclose(cache.frames, expected, atol=2e-3)
    assert list(np.diff(cache.file_starts)) == lengths == [12, 9]  # 3.0 s -> 12, 2.1 s -> 9
    assert cache.file_names == ["a.wav", "b.wav"]


def test_cache_is_reused_when_nothing_changed(mc, music, tmp_path, capsys):
    mc.prepare_cache(music, tmp_path / "cache")
    assert "Building the frame cache" in capsys.readouterr().out
    frames_file = next((tmp_path / "cache").glob("frames-*/frames.npy"))
    before = frames_file.stat().st_mtime_ns
    cache = mc.prepare_cache(music, tmp_path / "cache")
    assert "Reusing the frame cache" in capsys.readouterr().out
    assert frames_file.stat().st_mtime_ns == before
    assert len(cache.frames) == 21


@pytest.mark.parametrize("change", ["add", "remove", "rewrite", "touch", "rename"])
def test_cache_is_rebuilt_when_the_music_changes(mc, music, tmp_path, capsys, change):
    first = mc.prepare_cache(music, tmp_path / "cache")
    if change == "add":
        write_int16(music / "c.wav", tone(1.0, 550.0))
    elif change == "remove":
        (music / "b.wav").unlink()
    elif change == "rewrite":
        write_int16(music / "b.wav", tone(2.1, 880.0))  # same size, new content and time
    elif change == "touch":
        os.utime(music / "b.wav", ns=(1, 1))
    else:
        (music / "b.wav").rename(music / "z.wav")
    capsys.readouterr()
    second = mc.prepare_cache(music, tmp_path / "cache")
    assert "Building the frame cache" in capsys.readouterr().out
    assert second.fingerprint != first.fingerprint
    expected, _ = expected_frames(mc, mc.find_music_files(music), mc.DEFAULT_FRAMES)
    np.testing.assert_allclose(second.frames, expected, atol=2e-3)
    assert len(list((tmp_path / "cache").glob("frames-*"))) == 1  # the old cache is gone


def test_cache_is_rebuilt_when_a_preprocessing_setting_changes(mc, music, tmp_path, capsys,
                                                               monkeypatch):
    mc.prepare_cache(music, tmp_path / "cache")
    monkeypatch.setattr(mc, "CACHE_VERSION", mc.CACHE_VERSION + 1)
    capsys.readouterr()
    mc.prepare_cache(music, tmp_path / "cache")
    assert "Building the frame cache" in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["truncate frames", "delete starts", "garbage manifest",
                                    "manifest lies about size"])
def test_a_damaged_cache_is_never_trusted(mc, music, tmp_path, capsys, damage):
    cache_dir = tmp_path / "cache"
    mc.prepare_cache(music, cache_dir)
    folder = next(cache_dir.glob("frames-*"))
    if damage == "truncate frames":
        with open(folder / "frames.npy", "r+b") as handle:
            handle.truncate(1000)
    elif damage == "delete starts":
        (folder / "file_starts.npy").unlink()
    elif damage == "garbage manifest":
        (cache_dir / "cache.json").write_text("{not json")
    else:
        text = (cache_dir / "cache.json").read_text().replace('"num_frames": 21', '"num_frames": 22')
        (cache_dir / "cache.json").write_text(text)
    capsys.readouterr()
    cache = mc.prepare_cache(music, cache_dir)
    assert "Building the frame cache" in capsys.readouterr().out
    assert cache.frames.shape == (21, mc.NUM_FEATURES)


def test_bad_files_are_skipped_and_the_good_ones_used(mc, music, tmp_path, capsys):
    before = snapshot(music)
    (music / "broken.wav").write_bytes(b"RIFF\x00\x00")
    (music / "subfolder.wav").mkdir()
    (music / "notes.txt").write_text("ignored: not a .wav")
    write_int16(music / "UPPER.WAV", tone(1.0, 600.0))
    cache = mc.prepare_cache(music, tmp_path / "cache")
    err = capsys.readouterr().err
    assert err.count("warning: skipping") == 2
    assert "broken.wav: not a readable WAV" in err and "subfolder.wav: not a regular file" in err
    assert cache.file_names == ["UPPER.WAV", "a.wav", "b.wav"]
    after = snapshot(music)
    assert {name: after[name] for name in before} == before  # the music is untouched


def test_training_music_level_is_recorded(mc, tmp_path):
    folder = tmp_path / "music"
    folder.mkdir()
    write_int16(folder / "a.wav", tone(2.0, 440.0, amplitude=0.5))
    cache = mc.prepare_cache(folder, tmp_path / "cache")
    assert cache.rms_db == pytest.approx(20 * np.log10(0.5 / np.sqrt(2)), abs=0.05)


def test_sigkill_during_preprocessing_then_a_clean_rebuild(mc, tmp_path):
    music = tmp_path / "music"
    music.mkdir()
    for index in range(30):
        write_int16(music / f"{index:02d}.wav", melody(4.0, seed=index))
    before = snapshot(music)
    cache_dir = tmp_path / "cache"
    process = subprocess.Popen([sys.executable, str(SCRIPT), "-d", music, "-t", cache_dir,
                                "-n", "4", "-l", "1", "-e", "1"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list(cache_dir.glob("*.partial-*")) and time.monotonic() < deadline:
        time.sleep(0.001)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert list(cache_dir.glob("*.partial-*")), "the kill should land during preprocessing"
    assert not (cache_dir / "cache.json").exists()
    assert mc.load_cache(cache_dir, mc.dataset_fingerprint(mc.find_music_files(music))) is None
    cache = mc.prepare_cache(music, cache_dir)
    expected, _ = expected_frames(mc, mc.find_music_files(music), mc.DEFAULT_FRAMES)
    np.testing.assert_allclose(cache.frames, expected, atol=2e-3)
    assert not list(cache_dir.glob("*.partial-*"))  # the killed run's leftovers are cleared
    assert snapshot(music) == before
