#!/usr/bin/env python3
"""Training and generation speed of music-composer.py under the Keras backend KERAS_BACKEND
names (TensorFlow without it), with the tool's own model, batches, fit and generation.

    python3 tests/backend_speed.py                          # TensorFlow, default size
    KERAS_BACKEND=jax python3 tests/backend_speed.py        # the same on JAX
    KERAS_BACKEND=jax python3 tests/backend_speed.py --batches 10,64,256,1024   # on a GPU: which
                                                            # batch fills it, and its frames/s

It makes its own music (tests/benchmark.py's), or reads --music. tests/benchmark.py runs it
once per installed backend, side by side. A GPU is used where the backend sees one: this is
the script for a machine with a GPU (for JAX: pip install -r requirements-jax.txt, then
pip install "jax[cuda12]").
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark import BatchTimes, generation_seconds, load_tool, write_music  # noqa: E402


def training_frames_per_s(tool, cache, neurons, layers, batch_size, steps, warm_up=3):
    """Frames a second of the tool's training at this size and batch, in the precision a run
    chooses here (its units head, counting's logits, batches and fit), after warm-up; and the
    Network (for generation)."""
    keras = tool.import_keras()
    length = tool.sequence_length(cache.file_starts, tool.SEQUENCE_SECONDS)
    train_starts, validation_starts = tool.split_windows(cache.file_starts, length,
                                                         tool.training_stride(length))
    head = tool.music_units_head(cache, {})
    labels = tool.unit_labels(cache.codes, head.centroids)
    _, bigram = tool.unit_counting(labels, train_starts, validation_starts, length,
                                   head.components)
    model = tool.build_model(tool.NUM_FEATURES, neurons, layers, head)
    tool.unit_prior_of(model).set_weights([cache.components.T, head.centroids,
                                           np.log(bigram).astype(np.float32)])
    precision, _ = tool.training_precision("auto", tool.gpu_compute_capability())
    tool.use_precision(model, precision)
    tool.use_fastest_lstm_kernel(model, tool.gpu_available(), length)
    batches = tool.make_batches(cache.frames, train_starts, batch_size,
                                np.random.default_rng(0), shuffle=True, length=length,
                                labels=labels)
    steps = min(steps, len(batches) - warm_up - 1)
    model.fit(batches, epochs=1, steps_per_epoch=warm_up, verbose=0)  # compiles
    times = BatchTimes(keras)
    model.fit(batches, epochs=1, steps_per_epoch=steps + 1, verbose=0, callbacks=[times.callback])
    seconds = statistics.median(np.diff(times.stamps))
    tool.use_precision(model, "float32")  # as train() leaves it for generation
    return batch_size * length / seconds, precision, tool.Network(
        model, cache.normalisation, head.centroids)


def measure(args, work):
    tool = load_tool()
    tool.limit_blas_threads()
    music = args.music or write_music(work / "music", args.minutes)
    cache = tool.prepare_cache(music, args.cache or work / "cache")
    tool.import_keras()
    results = {"backend": tool.keras_backend(), "device": tool.describe_device()}
    network = None
    for batch_size in args.batches:
        started = time.perf_counter()
        fps, precision, network = training_frames_per_s(tool, cache, args.neurons, args.layers,
                                                        batch_size, args.steps)
        results[f"train_frames_per_s_batch{batch_size}"] = fps
        results["precision"] = precision
        print(f"{results['backend']}: training at batch {batch_size}: {fps:.0f} frames/s "
              f"({precision}; {time.perf_counter() - started:.0f} s with compiling)", flush=True)
    seconds, _, _ = generation_seconds(tool, network, cache, args.pieces, args.seconds, 3, work,
                                       tool.DEFAULT_FRAMES, "grains")
    results["gen_x_realtime"] = args.pieces * args.seconds / seconds
    print(f"{results['backend']}: generation {results['gen_x_realtime']:.0f}x realtime",
          flush=True)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--music", type=Path, help="a folder of music (default: made here)")
    parser.add_argument("--cache", type=Path, help="its frame cache folder (default: made here)")
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--neurons", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batches", type=lambda text: [int(b) for b in text.split(",")],
                        default=[10])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--pieces", type=int, default=10)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="one JSON object on the last line")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="music-composer-backend-") as folder:
        results = measure(args, Path(folder))
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
