"""Flags, their validation, and the first-run messages (none of which may import TensorFlow)."""

import subprocess
import sys

import pytest

from conftest import SCRIPT, run_cli, tone, write_int16

FLAGS = {"-n": "--hidden-layer-neurons", "-l": "--hidden-layer-count", "-e": "--epochs",
         "-b": "--batch-size", "-s": "--seconds-to-generate", "-g": "--generated-music-num"}


def parse(mc, argv):
    parser = mc.make_parser()
    return mc.config_from_args(parser.parse_args(argv), parser)


def test_defaults_match_the_original_tool(mc):
    config = parse(mc, [])
    assert str(config.dataset_dir) == "input_music_dataset"
    assert str(config.cache_dir) == "train_data"
    assert config.output_name == "output"
    assert (config.hidden_neurons, config.hidden_layers, config.epochs) == (1024, 4, 20)
    assert (config.batch_size, config.seconds, config.num_pieces) == (10, 10, 10)
    assert config.random_seed is None


def test_demo_uses_smaller_settings_unless_flags_are_given(mc):
    demo = parse(mc, ["--demo"])
    assert (demo.hidden_neurons, demo.hidden_layers, demo.epochs, demo.num_pieces) == (256, 2, 40, 3)
    assert demo.dataset_dir == mc.Path("music-composer-demo/music")
    assert "input_music_dataset" not in str(demo.dataset_dir)
    assert demo.cache_dir == mc.Path("music-composer-demo/train_data")
    chosen = parse(mc, ["--demo", "-n", "32", "-e", "2", "-t", "mine"])
    assert (chosen.hidden_neurons, chosen.hidden_layers, chosen.epochs) == (32, 2, 2)
    assert chosen.cache_dir == mc.Path("mine")


def test_demo_refuses_a_music_folder(mc, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(mc, ["--demo", "-d", "my-music"])
    assert exit_info.value.code == 2 and "leave out -d" in capsys.readouterr().err


def test_seed_wavs_make_one_piece_each(mc):
    config = parse(mc, ["--seed-wav", "a.wav", "b.wav", "-g", "7"])
    assert config.seed_wavs == (mc.Path("a.wav"), mc.Path("b.wav")) and config.num_pieces == 2
    assert parse(mc, ["--no-plots"]).plots is False and parse(mc, []).plots is True


def test_frames_default_to_magnitude_and_plain_is_the_original(mc, tmp_path):
    assert parse(mc, []).frames == "magnitude" == mc.DEFAULT_FRAMES
    assert parse(mc, ["--frames", "plain"]).frames == "plain"
    result = run_cli("--frames", "phase", cwd=tmp_path)
    assert result.returncode == 2 and "--frames" in result.stderr and "plain" in result.stderr
    assert "Traceback" not in result.stderr and not list(tmp_path.iterdir())


def test_temperature_defaults_by_frames_and_is_checked(mc, tmp_path):
    assert parse(mc, []).temperature == 1.0
    assert parse(mc, ["--frames", "plain"]).temperature == 0.0  # the original: plain regression
    assert parse(mc, ["--frames", "plain", "--temperature", "0.3"]).temperature == 0.3
    assert parse(mc, ["--temperature", "0"]).temperature == 0.0
    for bad in ["-1", "nan", "inf", "hot", "5"]:
        result = run_cli(f"--temperature={bad}", cwd=tmp_path)
        assert result.returncode == 2 and "--temperature" in result.stderr, bad
        assert "Traceback" not in result.stderr


def test_save_every_minutes_defaults_and_is_checked(mc, capsys):
    assert parse(mc, []).save_every_minutes == mc.SAVE_EVERY_MINUTES
    assert parse(mc, ["--save-every-minutes", "0"]).save_every_minutes == 0
    assert parse(mc, ["--save-every-minutes", "0.5"]).save_every_minutes == 0.5
    for bad in ("-1", "soon", "nan"):
        with pytest.raises(SystemExit):
            parse(mc, ["--save-every-minutes", bad])
        assert "--save-every-minutes" in capsys.readouterr().err


def test_short_and_long_flags_are_the_same(mc):
    parser = mc.make_parser()
    short = parser.parse_args("-d a -t b -o c -n 3 -l 2 -e 0 -b 5 -s 7 -g 1".split())
    long = parser.parse_args(
        ("--datasets-folder-path a --traindata-folder-path b --output-music-name c "
         "--hidden-layer-neurons 3 --hidden-layer-count 2 --epochs 0 --batch-size 5 "
         "--seconds-to-generate 7 --generated-music-num 1").split())
    assert vars(short) == vars(long)
    assert short.epochs == 0 and short.hidden_layer_neurons == 3


def test_trailing_slash_is_optional(mc):
    with_slash = parse(mc, ["-d", "music/", "-t", "cache/"])
    without = parse(mc, ["-d", "music", "-t", "cache"])
    assert with_slash.dataset_dir == without.dataset_dir
    assert with_slash.cache_dir == without.cache_dir


@pytest.mark.parametrize("short", sorted(FLAGS))
@pytest.mark.parametrize("value", ["-1", "abc", "1.5", ""])
def test_bad_values_are_refused_naming_the_flag(mc, capsys, short, value):
    with pytest.raises(SystemExit) as exit_info:
        mc.make_parser().parse_args([short, value])
    assert exit_info.value.code == 2
    assert FLAGS[short] in capsys.readouterr().err


@pytest.mark.parametrize("short", sorted(set(FLAGS) - {"-e"}))
def test_zero_is_refused_except_for_epochs(mc, capsys, short):
    with pytest.raises(SystemExit) as exit_info:
        mc.make_parser().parse_args([short, "0"])
    assert exit_info.value.code == 2
    assert "must be 1 or more" in capsys.readouterr().err
    assert mc.make_parser().parse_args(["-e", "0"]).epochs == 0


def test_bad_flag_through_the_command_line_has_no_traceback(tmp_path):
    result = run_cli("-n", "0", cwd=tmp_path)
    assert result.returncode == 2
    assert "--hidden-layer-neurons" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_lists_every_flag_with_its_default(tmp_path):
    result = run_cli("--help", cwd=tmp_path)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())  # argparse wraps lines where it likes
    for flag in ["-d", "-t", "-o", *FLAGS, "--random-seed", "--seed-wav", "--frames",
                 "--temperature", "--demo", "--no-plots"]:
        assert f"{flag} " in text or f"{flag}," in text
    for default in ["input_music_dataset/", "train_data/", "output", "1024", "4", "20", "10"]:
        assert f"(default: {default}" in text


def modules_after(argv, cwd):
    """Run the script in a fresh interpreter; report its exit code and whether TF was loaded."""
    code = (f"import runpy, sys; sys.argv = {[str(SCRIPT), *argv]!r}\n"
            "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
            "except SystemExit as e:\n    print('EXIT', e.code)\n"
            "print('TF', 'tensorflow' in sys.modules, 'keras' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True,
                            text=True, timeout=60)
    return result.stdout, result.stderr


@pytest.mark.parametrize("argv", [["--help"], ["-b", "x"], ["-d", "missing"], ["-d", "empty"]])
def test_tensorflow_is_not_imported_for_help_errors_or_first_run(tmp_path, argv):
    (tmp_path / "empty").mkdir()
    stdout, _ = modules_after(argv, tmp_path)
    assert "TF False False" in stdout


def test_first_run_creates_the_folder_and_says_what_to_do(tmp_path):
    result = run_cli(cwd=tmp_path)
    assert result.returncode == 1
    assert (tmp_path / "input_music_dataset").is_dir()
    assert "Copy your music" in result.stderr and "input_music_dataset" in result.stderr
    assert "--demo" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "train_data").exists()


def test_folder_without_usable_audio_says_what_was_found(tmp_path):
    music = tmp_path / "music"
    music.mkdir()
    (music / "notes.txt").write_text("not music")
    (music / "broken.wav").write_bytes(b"RIFF nonsense")
    result = run_cli("-d", music, "-t", tmp_path / "cache", cwd=tmp_path)
    assert result.returncode == 1
    assert "broken.wav" in result.stderr and "none usable" in result.stderr
    assert "Copy some music files" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in music.iterdir()) == ["broken.wav", "notes.txt"]


def test_dataset_path_that_is_a_file_is_refused(tmp_path):
    write_int16(tmp_path / "song.wav", tone(1.0))
    result = run_cli("-d", tmp_path / "song.wav", cwd=tmp_path)
    assert result.returncode == 1
    assert "is a file, not a folder" in result.stderr
    assert "Traceback" not in result.stderr

