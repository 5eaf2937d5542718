"""A smoke run of the benchmark at small sizes: it runs and reports every key. (Its figures at the
default sizes are in the README; timings are not asserted here, since the machines are noisy.)"""

import json
import subprocess
import sys

from conftest import ROOT, load_script

KEYS = ["help_s", "prep_x_realtime", "prep_peak_rss_mb_10min", "prep_peak_rss_mb_60min",
        "matmul_gflops", "train_frames_per_s", "train_mfu", "gen_x_realtime",
        "gen_x_realtime_plain", "gen_x_realtime_spectra",
        "gen_x_realtime_spectra_postfilter", "gen_speedup_vs_refeed",
        "grain_peak_rss_mb_10min", "grain_peak_rss_mb_60min", "params",
        "train_frames_per_s_1s_average", "train_mfu_1s_average", "train_epoch_cost_vs_1s_average",
        "train_frames_per_s_float32", "train_mfu_float32", "train_mixed_speedup",
        "prep_share_of_epoch", "gen_x_realtime_longest", "gen_longest_vs_10min",
        "train_frames_per_s_average", "train_units_vs_average", "gen_x_realtime_average", "units",
        "held_out_loss", "bigram_loss", "unigram_loss", "gen_x_realtime_walk",
        "gen_x_realtime_continuation", "gen_x_realtime_walk_longest", "gen_walk_longest_vs_10min",
        "gen_x_realtime_continuation_longest", "gen_continuation_longest_vs_10min",
        "index_s_longest", "index_share_of_epoch_longest", "train_frames_per_s_tensorflow",
        "gen_x_realtime_tensorflow", "train_frames_per_s_jax", "gen_x_realtime_jax",
        "train_jax_vs_tensorflow"]


def test_benchmark_quick_run_reports_every_key():
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "benchmark.py"), "--quick",
                             "--json"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    for key in KEYS:
        assert figures[key] > 0, key
    tool = load_script()  # -n 64 -l 2 with the default head (grains': units of the music's
    # sound, as many as its 2 minutes allow), by the formula the tool checks with
    assert tool.DEFAULT_HEAD[tool.DEFAULT_SYNTHESIS[tool.DEFAULT_FRAMES]] == "units"
    assert 2 <= figures["units"] <= tool.UNITS
    assert figures["params"] == tool.count_parameters(tool.NUM_FEATURES, 64, 2, figures["units"])
