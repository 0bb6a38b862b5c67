"""PyTorch fp32, ONNX fp32 and ONNX int8 side by side in one run: images/s at batch 1 and 32, and test accuracy.

python benchmarks/bench_export.py [--ckpt <run>/checkpoints/best-*.ckpt] [--threads auto] [--calibration-images 200]
    [--rounds 7] [--seconds 1] [--profile] [--out <folder>]

Without --ckpt: the best checkpoint of the newest finished main-job run (`python -m tlexp.train`, EfficientNet-Lite0
on Fashion-MNIST) in Hydra's default run folders, outputs/<date>/<time>_<strategy>_<model>/.

Both ONNX files are written by `tlexp.export` itself (the int8 one calibrated on the run's training images and
checked on its test images, as `quantize=int8` does), from the checkpoint's own run. Speed: every model runs the same
batch of test images for `--seconds` per round, the three models in turn, `--rounds` rounds; the median round is
reported, so that a change of load on a shared machine falls on all three alike. All three use the same thread
count (`--threads auto`: the cores no other process is running on, as `threads=auto` in training). Accuracy: the
whole test split (the ONNX models' from the int8 export's own check). The CPU, the threads and /proc/loadavg are
printed with the table.
`--profile` adds where the time goes at batch 1 (onnxruntime's profiler): per operator, and per kind of convolution.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tlexp import export
from tlexp.evaluation.intervals import wilson
from tlexp.model.inference import load_trained
from tlexp.run.accel import resolve_threads

BATCHES = (1, 32)
ISA = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")  # what onnxruntime's int8 kernels can use


def cpu() -> str:
    model, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown CPU":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    have = [f for f in ISA if f in flags]
    return f"{model} ({os.cpu_count()} cores{'; ' + ' '.join(have) if have else ''})"


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main_job_checkpoint(outputs: Path = Path("outputs")) -> Path:
    """The best checkpoint of the newest finished run of the main job (tf_efficientnet_lite0 on fashion_mnist) in the
    default run folders (benchmarks and tests name their own folders, with shortened runs in them)."""
    found = []
    for metrics in outputs.glob("[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]/*/metrics.json"):
        try:
            m = json.loads(metrics.read_text())
        except (OSError, ValueError):
            continue
        ckpt = m.get("checkpoint")
        if m.get("model") == "tf_efficientnet_lite0" and m.get("dataset") == "fashion_mnist" and ckpt:
            if Path(ckpt).is_file():
                found.append((metrics.stat().st_mtime, Path(ckpt)))
    if not found:
        sys.exit(
            f"no finished main-job run under {outputs}/ (EfficientNet-Lite0 on Fashion-MNIST): run `make train` "
            'first, or name a checkpoint: make bench-export ARGS="--ckpt <run>/checkpoints/<best>.ckpt"'
        )
    return max(found)[1]


def onnx_runner(path: Path, threads: int, profile_prefix: str | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    if profile_prefix:
        options.enable_profiling, options.profile_file_prefix = True, profile_prefix
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session, (lambda x: session.run(None, {export.INPUT: x})[0])


def torch_runner(module):
    def forward(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy()

    return forward


def images_per_second(runners: dict, x: np.ndarray, rounds: int, seconds: float) -> dict[str, list[float]]:
    """Each runner on batch `x` for `seconds`, in turn, `rounds` times: images/s of every round, per runner."""
    for forward in runners.values():  # warm-up: first-run allocations, prepacked weights, thread pools
        for _ in range(3):
            forward(x)
    speeds: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, forward in runners.items():
            done, started = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - started) < seconds or done == 0:
                forward(x)
                done += len(x)
            speeds[name].append(done / elapsed)
    return speeds


def test_accuracy(forward, datamodule) -> tuple[int, int]:
    """(right, images) of `forward` on the whole test split, fed as the export's check feeds the ONNX models."""
    right = seen = 0
    for x, y in export._image_batches(datamodule, datamodule.splits["test"]):
        right += int((forward(x).argmax(1) == y).sum())
        seen += len(y)
    return right, seen


def conv_kinds(float_file: Path) -> list[str]:
    """The kind of every Conv of the float graph in graph order: depthwise, pointwise (1x1), or other."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(float_file)).graph
    weights = {i.name: numpy_helper.to_array(i).shape for i in graph.initializer}
    kinds = []
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        shape = weights.get(node.input[1], (0, 0, 0, 0))
        kinds.append("depthwise" if group > 1 and shape[1] == 1 else "pointwise" if shape[2:] == (1, 1) else "other")
    return kinds


def profile(files: dict[str, Path], kinds: list[str], x: np.ndarray, threads: int, work: Path) -> None:
    """Where the time goes at batch 1, per operator and per kind of convolution (onnxruntime's profiler)."""
    print(f"\nwhere the time goes at batch {len(x)} ({threads} thread{'s' if threads > 1 else ''}; ms per image):")
    for name, path in files.items():
        session, forward = onnx_runner(path, threads, str(work / f"profile_{name.replace(' ', '_')}"))
        runs = 50
        for _ in range(10 + runs):
            forward(x)
        events = json.loads(Path(session.end_profiling()).read_text())
        nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
        per_run = (10 + runs) * len(x)
        by_op: dict[str, float] = {}
        for e in nodes:
            by_op[e["args"]["op_name"]] = by_op.get(e["args"]["op_name"], 0.0) + e["dur"] / 1000 / per_run
        total = sum(by_op.values())
        top = sorted(by_op.items(), key=lambda kv: -kv[1])[:5]
        print(f"  {name:<10} {total:6.2f} ms in kernels: " + ", ".join(f"{op} {ms:.2f}" for op, ms in top))
        convs = [e for e in nodes if "Conv" in e["args"]["op_name"]]
        if kinds and len(convs) == len(kinds) * (10 + runs):  # executed in graph order, one per Conv per run
            split: dict[str, float] = {}
            for i, e in enumerate(convs):
                split[kinds[i % len(kinds)]] = split.get(kinds[i % len(kinds)], 0.0) + e["dur"] / 1000 / per_run
            counts = {k: kinds.count(k) for k in split}
            parts = ", ".join(f"{k} ({counts[k]}) {ms:.2f}" for k, ms in split.items())
            print(f"  {'':<10} convolutions: {parts}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", help="a checkpoint inside its run folder; default: the newest main-job run's best")
    parser.add_argument("--threads", default="auto", help="auto (the free cores) or a count, for all three")
    parser.add_argument("--calibration-images", type=int, default=200)
    parser.add_argument("--max-drop", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=1.0, help="per model per round")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--out", default=None, help="keep the two ONNX files and their cards here")
    args = parser.parse_args()

    load_before = loadavg()
    threads = resolve_threads(args.threads, "cpu")
    torch.set_num_threads(threads)
    ckpt = Path(args.ckpt).expanduser() if args.ckpt else main_job_checkpoint()
    module = load_trained(ckpt)
    datamodule = export.run_datamodule(ckpt, module)
    training = export.training_summary(ckpt)
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        folder = Path(args.out) if args.out else Path(tmp)
        files = {"ONNX fp32": folder / "fp32.onnx", "ONNX int8": folder / "int8.onnx"}
        started = time.perf_counter()
        export.export(module, "onnx", files["ONNX fp32"], training, str(ckpt))
        fp32_seconds = time.perf_counter() - started
        started = time.perf_counter()
        int8 = export.Int8(datamodule, args.calibration_images, args.max_drop)
        try:
            card = export.export(module, "onnx", files["ONNX int8"], training, str(ckpt), int8)
        except export.ConfigError as err:
            sys.exit(f"the int8 export was refused: {err}")
        int8_seconds = time.perf_counter() - started
        check = card["quantization"]["check"]

        runners = {"PyTorch fp32": torch_runner(module)}
        for name, path in files.items():
            runners[name] = onnx_runner(path, threads)[1]
        test_x = next(export._image_batches(datamodule, datamodule.splits["test"], batch_size=max(BATCHES)))[0]
        speed = {b: images_per_second(runners, test_x[:b], args.rounds, args.seconds) for b in BATCHES}
        # The ONNX models' accuracy is the export's own check (the whole test split); PyTorch's is measured here.
        accuracy = {
            "PyTorch fp32": test_accuracy(runners["PyTorch fp32"], datamodule),
            "ONNX fp32": (check["float_acc"]["value"], check["float_acc"]["n"]),
            "ONNX int8": (check["int8_acc"]["value"], check["int8_acc"]["n"]),
        }
        load_after = loadavg()

        pre = module.eval_preprocessing()
        print(
            f"\nbench-export: {module.hparams.model_name}, {pre.image_size}x{pre.image_size} input, "
            f"{len(module.class_names)} classes; {ckpt}\n"
            f"CPU: {cpu()}; {threads} thread{'s' if threads > 1 else ''} for each model (--threads {args.threads})\n"
            f"load (/proc/loadavg): {load_before} before, {load_after} after\n"
            f"torch {torch.__version__}, onnxruntime {card['quantization']['onnxruntime']}; "
            f"speed = median of {args.rounds} interleaved rounds of {args.seconds:g} s (min-max in brackets)\n"
        )
        base = {b: statistics.median(speed[b]["ONNX fp32"]) for b in BATCHES}
        head = "| model | size | " + " | ".join(f"batch {b}, images/s" for b in BATCHES)
        print(head + " | vs ONNX fp32 (batch " + " / ".join(map(str, BATCHES)) + ") | test accuracy |")
        print("|---|---:|" + "---:|" * len(BATCHES) + "---:|---|")
        for name in runners:
            size = f"{files[name].stat().st_size / 1e6:.1f} MB" if name in files else "checkpoint"
            cells = []
            for b in BATCHES:
                s = speed[b][name]
                cells.append(f"{statistics.median(s):.0f} [{min(s):.0f}-{max(s):.0f}]")
            ratio = " / ".join(f"x{statistics.median(speed[b][name]) / base[b]:.2f}" for b in BATCHES)
            acc, seen = accuracy[name]
            right = acc if isinstance(acc, int) else round(acc * seen)
            print(f"| {name} | {size} | " + " | ".join(cells) + f" | {ratio} | {wilson(right, seen)} |")
        low, high = check["drop_points_interval"]
        print(
            f"\nint8 against the float model on {check['images']} test images: drop {check['drop_points']:+.2f} "
            f"points [{low:+.2f}, {high:+.2f}], top-1 agreement {100 * check['agreement']['value']:.1f}%; "
            f"calibrated on {card['quantization']['calibration']['images']} training images "
            f"({card['quantization']['format']}, weights {card['quantization']['weights']}, "
            f"{card['quantization']['calibration_method']}). Export took {fp32_seconds:.0f} s (fp32), "
            f"{int8_seconds:.0f} s (int8, with calibration and the test check)."
        )
        ratio = statistics.median(speed[1]["ONNX int8"]) / base[1]
        print(
            f"target int8 >= 2x ONNX fp32 at batch 1 with <= 1 point drop: "
            f"{'met' if ratio >= 2 and check['drop_points'] <= 1 else 'not met'} "
            f"(x{ratio:.2f}, drop {check['drop_points']:+.2f} points)"
        )
        if args.profile:
            profile(files, conv_kinds(files["ONNX fp32"]), test_x[:1], threads, Path(tmp))


if __name__ == "__main__":
    main()
