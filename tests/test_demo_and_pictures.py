"""--demo, --seed-wav and the pictures, through the real command line."""

import struct

import json

import numpy as np
import pytest
from scipy.io import wavfile

from conftest import melody, run_cli, tone, write_int16

TINY = ["-n", "8", "-l", "1", "-b", "8", "--random-seed", "0"]


def png_size(path):
    """(width, height) of a PNG, after checking its signature and header chunk."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
    return struct.unpack(">II", data[16:24])


def test_demo_piece_is_deterministic_music(mc):
    piece = mc.demo_piece()
    assert piece.dtype == np.float32 and len(piece) == 96 * 44_100
    np.testing.assert_array_equal(piece, mc.demo_piece())
    assert 0.79 < np.abs(piece).max() <= 0.8
    # The notes move: the loudest pitch of successive half-seconds changes often.
    halves = piece[: 40 * 22_050].reshape(40, 22_050)
    peaks = np.argmax(np.abs(np.fft.rfft(halves * np.hanning(22_050), axis=1))[:, 500:], axis=1)
    assert len(set(peaks.tolist())) >= 5


def test_demo_music_is_written_once_in_its_own_folder(mc, tmp_path):
    path = mc.write_demo_music(tmp_path / "demo" / "music")
    assert path.parent == tmp_path / "demo" / "music"
    rate, samples = wavfile.read(path)
    assert rate == 44_100 and samples.dtype == np.int16
    before = path.stat().st_mtime_ns
    assert mc.write_demo_music(tmp_path / "demo" / "music") == path
    assert path.stat().st_mtime_ns == before


def test_demo_runs_the_whole_job_apart_from_the_users_folders(tmp_path):
    result = run_cli("--demo", "-n", "16", "-e", "2", "-g", "2", "-s", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    demo = tmp_path / "music-composer-demo"
    assert (demo / "music" / "demo-piece.wav").exists()
    assert (demo / "train_data" / "model.keras").exists()
    assert not (tmp_path / "input_music_dataset").exists()
    assert not (tmp_path / "train_data").exists()
    for index in range(2):
        rate, samples = wavfile.read(demo / f"output-{index}.wav")
        assert rate == 44_100 and len(samples) == 3 * 44_100 and np.abs(samples).max() > 0
        width, height = png_size(demo / f"output-{index}.png")
        assert 400 <= width <= 2000 and 200 <= height <= 1200
    width, height = png_size(demo / "train_data" / "loss.png")
    assert 400 <= width <= 2000 and 200 <= height <= 1200
    assert f"Loss curve: {demo / 'train_data' / 'loss.png'}".replace(str(tmp_path) + "/", "") \
        in result.stdout


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("seeded")
    music = root / "music"
    music.mkdir()
    write_int16(music / "train.wav", melody(6.0, seed=7))
    result = run_cli("-d", music, "-t", root / "cache", "-e", "1", "-g", "1", "-s", "1",
                     "--no-plots", *TINY, cwd=root)
    assert result.returncode == 0, result.stderr
    assert not list(root.glob("*.png")) and not (root / "cache" / "loss.png").exists()
    return root, music


def test_seed_wav_continues_music_the_network_never_heard(trained):
    root, music = trained
    unheard = [write_int16(root / "mine-a.wav", melody(3.0, seed=99)),
               write_int16(root / "mine-b.wav", tone(5.0, 523.3))]
    result = run_cli("-d", music, "-t", root / "cache", "-e", "0", "-s", "2", "-o", "cont",
                     "--seed-wav", *unheard, *TINY, cwd=root)
    assert result.returncode == 0, result.stderr
    assert "Continuing 2 pieces" in result.stdout
    for index, source in enumerate(unheard):
        _, original = wavfile.read(source)
        rate, piece = wavfile.read(root / f"cont-{index}.wav")
        assert rate == 44_100 and len(piece) == (2 + 2) * 44_100  # 2 s of the seed, 2 s new
        # The seed's last 2 s, unchanged but for the last quarter second, where the first
        # overlapping window fades it into the new music.
        unchanged = 2 * 44_100 - 11_025
        np.testing.assert_allclose(piece[:unchanged], original[-2 * 44_100 : -11_025], atol=1)
        assert np.abs(piece[2 * 44_100:]).max() > 0
        png_size(root / f"cont-{index}.png")
        # The report says how the continuation follows its seed, beside the music.
        report = json.loads((root / f"cont-{index}.json").read_text())
        assert -1 <= report["seed_key"] <= 1 and -1 <= report["seed_timbre"] <= 1
        assert 0 <= report["music_seed_key"] <= 1
        # Grains (the default) say how much of the continuation is the seed's own recording.
        assert 0 <= report["seed_share"] <= 1
    assert "follows its seed: key" in result.stdout
    assert "played from the seed's own recording" in result.stdout


@pytest.mark.parametrize("case", ["too short", "not audio", "missing"])
def test_a_bad_seed_wav_is_refused_before_any_work(trained, case):
    root, music = trained
    path = root / f"bad-{case.replace(' ', '-')}.wav"
    if case == "too short":
        write_int16(path, tone(0.5))
    elif case == "not audio":
        path.write_text("hello")
    checkpoint = root / "cache" / "model.keras"
    before = checkpoint.read_bytes()
    result = run_cli("-d", music, "-t", root / "cache", "-e", "1", "--seed-wav", path, *TINY,
                     cwd=root)
    assert result.returncode == 1
    assert str(path) in result.stderr and "Traceback" not in result.stderr
    assert {"too short": "needs at least 1 s", "not audio": "not a readable WAV",
            "missing": "no such file"}[case] in result.stderr
    assert checkpoint.read_bytes() == before  # refused before training


def test_generating_from_a_checkpoint_takes_its_size(trained):
    """-e 0 without -n or -l uses the checkpoint's size; a size given that differs is refused."""
    root, music = trained
    result = run_cli("-d", music, "-t", root / "cache", "-e", "0", "-s", "1", "-g", "1",
                     "-o", "sized", "--no-plots", cwd=root)
    assert result.returncode == 0, result.stderr
    assert "Using the checkpoint's network size, -n 8 -l 1" in result.stdout
    assert (root / "sized-0.wav").exists()
    refused = run_cli("-d", music, "-t", root / "cache", "-e", "0", "-n", "16", "-o", "sized",
                      "--no-plots", cwd=root)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "holds a network of -n 8 -l 1, but this run asks for -n 16 -l 4" in refused.stderr
