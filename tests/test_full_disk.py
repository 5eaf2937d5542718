"""A full disk at each write: a message naming the folder, exit 1, no traceback, nothing
half-written left behind, and what earlier runs finished still whole. On real small
filesystems (tmpfs, mounted as root), and by injecting ENOSPC where mounting is not allowed."""

import errno
import json
import os
import subprocess
import wave

import numpy as np
import pytest
from scipy.io import wavfile

from conftest import melody, run_cli, write_int16

TINY = ["-n", "8", "-l", "1", "-b", "4", "-s", "2", "-g", "1", "--no-plots"]


@pytest.fixture
def small_disk(tmp_path):
    """mount(kilobytes) -> a folder on a tmpfs of that size; remount(kilobytes) resizes it."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = []

    def mount(kilobytes):
        command = ["mount", "-t", "tmpfs", "-o", f"size={kilobytes}k", "tmpfs", str(folder)]
        if mounted:
            command = ["mount", "-o", f"remount,size={kilobytes}k", str(folder)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()}); "
                        f"test_injected_enospc covers the same paths")
        mounted.append(folder)
        return folder

    yield mount
    if mounted:
        subprocess.run(["umount", str(folder)], check=False)


def leftovers(folder):
    return [path.name for path in folder.rglob("*")
            if ".partial-" in path.name or ".tmp-" in path.name]


def music_of(tmp_path, seconds):
    music = tmp_path / "music"
    music.mkdir(exist_ok=True)
    write_int16(music / "a.wav", melody(seconds, seed=3))
    return music


def train_on_disk(tmp_path, disk, seconds):
    """A tiny first run with its traindata folder on `disk`: (music, traindata, result)."""
    music = music_of(tmp_path, seconds)
    cache = disk / "train"
    return music, cache, run_cli("-d", music, "-t", cache, "-e", "1", *TINY,
                                 "-o", tmp_path / "out", cwd=tmp_path)


def test_the_cache_on_a_full_disk_keeps_the_previous_one(mc, tmp_path, small_disk):
    disk = small_disk(4096)
    music, cache, first = train_on_disk(tmp_path, disk, 5.0)
    manifest = (cache / mc.CACHE_MANIFEST).read_text() if first.returncode == 0 else None
    if manifest is None:  # the checkpoint did not fit beside it: build the cache alone
        mc.prepare_cache(music, cache)
        manifest = (cache / mc.CACHE_MANIFEST).read_text()
    old_fingerprint = json.loads(manifest)["fingerprint"]
    write_int16(music / "b.wav", melody(30.0, seed=4))  # the new cache cannot fit
    result = run_cli("-d", music, "-t", cache, "-e", "1", *TINY, "-o", tmp_path / "out2",
                     cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"The disk holding {cache} is full: writing the frame cache failed" in result.stderr
    assert "-t/--traindata-folder-path" in result.stderr
    assert leftovers(disk) == [] and not list(cache.glob("frames-*.partial-*"))
    assert (cache / mc.CACHE_MANIFEST).read_text() == manifest
    assert mc.load_cache(cache, old_fingerprint) is not None  # still whole and trusted


def test_a_checkpoint_on_a_full_disk_keeps_the_last_one(mc, tmp_path, small_disk):
    disk = small_disk(16384)
    music, cache, first = train_on_disk(tmp_path, disk, 8.0)
    assert first.returncode == 0, first.stderr
    checkpoint = (cache / mc.CHECKPOINT_NAME).read_bytes()
    used_kb = int(subprocess.run(["du", "-sk", str(disk)], capture_output=True, text=True)
                  .stdout.split()[0])
    small_disk(used_kb + 256)  # room for a little, not for another checkpoint
    result = run_cli("-d", music, "-t", cache, "-e", "1", *TINY, "-o", tmp_path / "out2",
                     cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"The disk holding {cache} is full: writing the checkpoint model.keras failed" \
        in result.stderr
    assert leftovers(disk) == []
    assert (cache / mc.CHECKPOINT_NAME).read_bytes() == checkpoint
    metadata, _, _ = mc.read_checkpoint_metadata(cache / mc.CHECKPOINT_NAME)
    assert metadata["epochs_done"] == 1


def test_pieces_on_a_full_disk_leave_earlier_ones_whole(mc, tmp_path, small_disk):
    music = music_of(tmp_path, 8.0)
    cache = tmp_path / "train"
    trained = run_cli("-d", music, "-t", cache, "-e", "1", *TINY, "-o", tmp_path / "out",
                      cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    # Room for an earlier piece (88 KB) and two new ones of 2 s (176 KB each, which the check
    # before any work asks for), but not for their spectrograms.
    disk = small_disk(88 + 400)
    earlier = disk / "song-0.wav"
    write_int16(earlier, melody(1.0))
    before = earlier.read_bytes()
    plots = [flag for flag in TINY if flag != "--no-plots"]
    result = run_cli("-d", music, "-t", cache, "-e", "0", *plots, "-g", "2", "-o", disk / "song",
                     cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"The disk holding {disk} is full: writing the pieces, their reports and " \
        f"spectrograms failed" in result.stderr
    assert "-o/--output-music-name" in result.stderr
    assert leftovers(disk) == [] and earlier.read_bytes() == before
    for path in disk.glob("song-*.wav"):  # whatever is there under a final name is whole
        rate, samples = wavfile.read(path)
        assert rate == 44_100 and len(samples) in (44_100, 2 * 44_100)


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_injected_enospc(mc, tmp_path, monkeypatch):
    """The same paths where no tmpfs can be mounted: every fsync reports a full disk."""
    music = music_of(tmp_path, 4.0)
    monkeypatch.setattr(mc.os, "fsync", enospc)
    with pytest.raises(mc.UserError, match="is full: writing the frame cache failed"):
        mc.prepare_cache(music, tmp_path / "cache")
    assert leftovers(tmp_path / "cache") == [] and not list((tmp_path / "cache").glob("frames-*"))
    with pytest.raises(mc.UserError, match="is full: writing the checkpoint model.keras"):
        mc.save_checkpoint(tmp_path / "model.keras", mc.build_model(6, 3, 1), {}, np.zeros(6),
                           np.ones(6))
    assert list(tmp_path.glob("*.keras")) == []
    report = tmp_path / "report.json"
    with pytest.raises(OSError), mc.disk_space_for(tmp_path, "x", "-o") as _:
        raise OSError(errno.EACCES, "not a full disk: passed on as it is")
    with pytest.raises(mc.UserError, match="writing the reports failed"), \
            mc.disk_space_for(tmp_path, "the reports", "-o/--output-music-name"):
        mc.write_json_atomically(report, {"a": 1})
    assert list(tmp_path.glob("*report*")) == []
    monkeypatch.setattr(wave.Wave_write, "writeframes", enospc)
    writers = mc.WavWriters([tmp_path / "p-0.wav"])
    with pytest.raises(mc.UserError, match="writing the pieces failed"), \
            mc.disk_space_for(tmp_path, "the pieces", "-o/--output-music-name"):
        try:
            writers.write(np.zeros((1, 100), np.float32))
        except OSError:
            writers.discard()
            raise
    assert list(tmp_path.glob("*p-0*")) == []
