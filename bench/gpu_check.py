"""The prepared GPU check: everything case-tune's CUDA path must show, in one command.

    bash bench/gpu_check.sh            # a bare GPU machine: install, then this
    python -m bench.gpu_check          # installed already; a CPU-only machine runs a dry run

Steps (each timed and bounded; one failing does not stop the others):

- ``tests``: ``pytest -m gpu`` (tests/test_gpu.py: device rule, bf16/fp16 autocast and the
  GradScaler, pinned buffers, no host synchronisation in a training pass, checkpoints saved on
  the GPU and loaded on the CPU, a trial continued on the other device);
- ``packing``: one epoch of case-compressing at the seed's sizes (512 x 1024 audio, 128 x 768
  text, batch 64) on a synthetic store of 2,000 utterances written here, by 1, 2 and 4 trial
  processes sharing the GPU at once (``CASE_TUNE_GPU_SHARE`` 1, 0.5, 0.25, as
  ``--gpus-per-trial`` sets it): trial-epochs per minute, the share of each step the GPU spends
  waiting for its batch, GPU memory per trial;
- ``split``: one trial with its split resident vs streamed from the memory maps, bf16 vs fp16;
- ``prepare``: feature extraction with encoders of the real architectures (random weights, as
  bench_real_scale builds them): utterances per second;
- ``demo``: the README's 24-trial sweep and its 2 x 2 finalize on the demo corpus, end to end
  through the command line (time, and its pick against the CPU run's in results/demo).

Then one table, printed and written to results/bench.md (section ``gpu-check``, or
``gpu-check-dry`` for a dry run), with the targets beside the figures. Without CUDA (or with
``--dry-run``) the same steps run on the CPU at small sizes in under 3 minutes, so the script
is tested where no GPU is (tests/test_gpu_check.py) and cannot rot.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
KEMDY20_TRAIN = 10_770  # about 80 % of KEMDy20's 13,462 utterances: the seed's training split
SEED_SIZES = dict(text_dim=768, audio_dim=1024, max_tokens=128, max_frames=512)
DRY_SIZES = dict(text_dim=32, audio_dim=48, max_tokens=16, max_frames=64)
TARGETS = {
    "wait": 0.05,  # a resident trial waits for data <= 5 % of its step
    "packing": 3.0,  # 4 trials on one GPU: >= 3x the trial-epochs per minute of 1
    "kemdy20_epoch_s": 5.0,  # one case-compressing epoch on KEMDy20's training split
}


@dataclass
class Plan:
    """Sizes of one check: the GPU's, or the dry run's (CPU, small, < 3 minutes)."""

    dry: bool
    utterances: int
    sizes: dict[str, int]
    shares: tuple[int, ...] = (1, 2, 4)
    epochs: int = 1  # timed epochs per trial, after one warm-up epoch
    prepare_utterances: int = 64
    demo_flags: tuple[str, ...] = ()
    finalize_flags: tuple[str, ...] = ()
    step_timeout: int = 300
    demo_timeout: int = 420  # each of the demo's two commands
    device: str = "cuda"

    @classmethod
    def for_machine(cls, dry: bool) -> Plan:
        if dry:
            return cls(
                dry=True,
                utterances=256,
                sizes=DRY_SIZES,
                shares=(1, 2),
                prepare_utterances=4,
                demo_flags=("--num-samples", "2", "--max-epochs", "2", "--final-epochs", "3"),
                finalize_flags=("--top-k", "1", "--seeds", "0"),
                step_timeout=150,
                demo_timeout=150,
                device="cpu",
            )
        return cls(
            dry=False,
            utterances=2_000,
            sizes=SEED_SIZES,
            epochs=5,  # an epoch is well under a second there: time several
            demo_flags=("--gpus-per-trial", "0.25", "--max-concurrent", "4"),
            finalize_flags=("--max-concurrent", "4"),
        )


@dataclass
class Row:
    step: str
    figure: str
    value: str
    target: str = ""
    ok: bool | None = None  # None: no target, or not measured


@dataclass
class Report:
    plan: Plan
    rows: list[Row] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, *args: Any, **kw: Any) -> None:
        self.rows.append(Row(*args, **kw))
        r = self.rows[-1]
        mark = {True: " [met]", False: " [MISSED]", None: ""}[r.ok]
        target = f" (target {r.target})" if r.target else ""
        print(f"  {r.step}: {r.figure} = {r.value}{target}{mark}", flush=True)


# -- one trial's epoch, in its own process -------------------------------------------------
def trial_epochs(
    store: str,
    *,
    share: float,
    amp: str,
    budget: int | None,
    epochs: int,
    go: str | None,
    device: str,
) -> dict[str, Any]:
    """One warm-up epoch and ``epochs`` timed ones of case-compressing (batch 64) on the train
    split of ``store``, as a trial process holding ``share`` of the GPU. With ``go``, wait
    for that file before the timed epochs, so that packed trials time the same moments."""
    import torch

    from data_prep.store import FeatureStore
    from models.data import RESIDENT_MAX_ENV, use_gpu_share
    from models.train import Trainer

    use_gpu_share(share)
    if budget is not None:
        os.environ[RESIDENT_MAX_ENV] = str(budget)
    torch.set_num_threads(1)
    fs = FeatureStore.open(store, sealed=("test",))
    config = {"model": "case-compressing", "batch_size": 64, "epochs": 150, "amp": amp != "fp32"}
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    trainer = Trainer(config, fs, eval_splits=(), amp_dtype=dtype, device=device)
    trainer.model.train()
    timed_pass(trainer)  # warm-up: allocations, cuBLAS handles, kernel choice
    if go:
        Path(go + f".ready{os.getpid()}").touch()
        while not Path(go).exists():
            time.sleep(0.01)
    start = time.time()
    waits = [timed_pass(trainer) for _ in range(epochs)]
    end = time.time()
    out = {
        "start": start,
        "end": end,
        "epoch_s": (end - start) / epochs,
        "wait": sum(waits) / len(waits),
        "n": trainer.train_data.n,
        "resident": trainer.train_data.resident,
        "device": str(trainer.device),
        "amp": amp if trainer.use_amp else "fp32",
    }
    if trainer.device.type == "cuda":
        out["mem_gb"] = torch.cuda.max_memory_reserved(trainer.device) / 1e9
    else:
        lines = Path("/proc/self/status").read_text().splitlines()
        status = dict(line.split(":", 1) for line in lines if ":" in line)
        out["mem_gb"] = int(status["VmHWM"].split()[0]) * 1024 / 1e9
    return out


def timed_pass(trainer: Any) -> float:
    """One pass of training steps as `Trainer._steps` takes them; returns the share of the
    pass the device spent waiting for its batches: the time from one step's end (or the
    pass's start) to the moment the next batch is ready, over the whole pass. On CUDA these
    are events on the training stream (the GPU's own clock, read once at the end)."""
    import torch

    data, bs, cuda = trainer.train_data, trainer.config.batch_size, trainer.device.type == "cuda"

    def mark():
        if not cuda:
            return time.perf_counter()
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        return ev

    perm = torch.randperm(data.n, generator=trainer.generator)
    marks = [mark()]
    for idx, batch in data.batches(perm, bs):
        marks.append(mark())  # the batch is ready
        with trainer.autocast():
            loss = trainer.objective(trainer.model(batch), data.labels[idx])
        trainer._step(loss)
        marks.append(mark())  # the step is done
    if cuda:
        torch.cuda.synchronize()
        gaps = [marks[i].elapsed_time(marks[i + 1]) for i in range(len(marks) - 1)]
    else:
        gaps = [marks[i + 1] - marks[i] for i in range(len(marks) - 1)]
    waiting = sum(gaps[0::2])
    return waiting / max(sum(gaps), 1e-12)


def run_trials(
    store: Path, n: int, plan: Plan, *, amp: str, budget: int | None = None
) -> list[dict[str, Any]]:
    """``n`` trial processes at once, each holding 1/n of the GPU; timed together."""
    with tempfile.TemporaryDirectory(prefix="gpu-check-go-") as tmp:
        go = str(Path(tmp) / "go")
        spec = {"store": str(store), "share": 1.0 / n, "amp": amp, "budget": budget}
        spec |= {"epochs": plan.epochs, "go": go if n > 1 else None, "device": plan.device}
        cmd = [sys.executable, "-m", "bench.gpu_check", "--child", json.dumps(spec)]
        procs = [
            subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, env=_env())
            for _ in range(n)
        ]
        try:
            return _collect(procs, Path(tmp), go, time.monotonic() + plan.step_timeout)
        finally:  # a failed or late trial takes no GPU memory from the steps after it
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()


def _collect(procs: list[subprocess.Popen], tmp: Path, go: str, deadline: float) -> list[dict]:
    """Release the packed trials together (the go file), then read each one's figures."""
    n = len(procs)
    while n > 1 and len(list(tmp.glob("go.ready*"))) < n:
        if time.monotonic() > deadline or any(p.poll() not in (None, 0) for p in procs):
            break
        time.sleep(0.01)
    Path(go).touch()
    outs = []
    for p in procs:
        stdout, _ = p.communicate(timeout=max(1, deadline - time.monotonic()))
        if p.returncode:
            raise RuntimeError(f"a trial process exited {p.returncode}")
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    return outs


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


# -- the steps -------------------------------------------------------------------------------
def step_tests(report: Report) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"]
        + ["tests/test_gpu.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=report.plan.step_timeout,
    )
    summary = (proc.stdout.strip().splitlines() or ["(no output)"])[-1].strip("= ")
    passed = proc.returncode == 0 and "passed" in summary
    skipped_all = "skipped" in summary and "passed" not in summary and "failed" not in summary
    report.add(
        "tests",
        "`pytest -m gpu`",
        summary,
        "all pass",
        None if skipped_all else passed,
    )
    if not passed and not skipped_all:
        print(proc.stdout[-4000:], file=sys.stderr)


def step_packing(report: Report, store: Path) -> dict[str, Any]:
    plan, base = report.plan, None
    for n in plan.shares:
        outs = run_trials(store, n, plan, amp="bf16")
        wall = max(o["end"] for o in outs) - min(o["start"] for o in outs)
        per_min = n * plan.epochs / wall * 60
        if base is None:
            base = {"per_min": per_min, **outs[0]}
        ratio = per_min / base["per_min"]
        wait = max(o["wait"] for o in outs)
        mem = max(o["mem_gb"] for o in outs)
        where = f"{outs[0]['device']}, {'resident' if outs[0]['resident'] else 'streamed'}"
        value = f"{per_min:.1f} ({ratio:.2f}x of 1); wait {wait:.1%}; {mem:.2f} GB / trial"
        last = n == max(plan.shares)
        report.add(
            "packing",
            f"{n} trial(s) of 1/{n} GPU: trial-epochs / min ({where})",
            value,
            f">= {TARGETS['packing']:g}x at 4" if last and n == 4 else "",
            (ratio >= TARGETS["packing"]) if (last and n == 4 and not plan.dry) else None,
        )
    report.add(
        "packing",
        "1 resident trial: step time waiting for data",
        f"{base['wait']:.1%}",
        f"<= {TARGETS['wait']:.0%}",
        None if plan.dry else base["wait"] <= TARGETS["wait"],
    )
    ups = base["n"] / base["epoch_s"]
    kemdy = KEMDY20_TRAIN / ups
    sizes = "at these small sizes, not KEMDy20's" if plan.dry else "extrapolated"
    report.add(
        "packing",
        f"1 trial: utterances / s; a KEMDy20 training epoch ({KEMDY20_TRAIN:,} utt.), {sizes}",
        f"{ups:,.0f} utt/s; {kemdy:.1f} s",
        f"<= {TARGETS['kemdy20_epoch_s']:g} s (H100-class)",
        None if plan.dry else kemdy <= TARGETS["kemdy20_epoch_s"],
    )
    return base


def step_split(report: Report, store: Path) -> None:
    plan = report.plan
    for amp in ("bf16", "fp16"):
        for budget, label in ((None, "resident"), (0, "streamed")):
            (o,) = run_trials(store, 1, plan, amp=amp, budget=budget)
            assert o["resident"] == (budget is None), o
            ran = o["amp"] if o["amp"] == amp else f"{o['amp']} ({amp} asked: autocast is CUDA's)"
            report.add(
                "split",
                f"{label}, {ran}: s / epoch; waiting for data",
                f"{o['epoch_s']:.2f} s; {o['wait']:.1%}",
            )


def step_prepare(report: Report, tmp: Path) -> None:
    import torch

    from bench.bench_real_scale import build_real_size_encoders, time_extraction
    from data_prep.demo import write_demo_corpus
    from data_prep.encoders import build_demo_encoders
    from data_prep.kemdy20 import read_corpus

    plan = report.plan
    n = plan.prepare_utterances
    corpus = write_demo_corpus(
        tmp / "corpus", sessions=max(1, n // 12 + 1), utterances_per_script=1
    )
    table = read_corpus(corpus).utterances.iloc[:n]
    wavs, texts = table["wav_path"].tolist(), table["text"].tolist()
    if plan.dry:
        audio_dir, text_dir = build_demo_encoders(tmp / "enc", texts)
        label = "the demo's tiny encoders (dry run)"
    else:
        audio_dir, text_dir = build_real_size_encoders(tmp / "enc", texts)
        label = "xlsr-large + bert-base architectures, random weights"
    device = "cuda" if torch.cuda.is_available() and not plan.dry else "cpu"
    per_utt = time_extraction(audio_dir, text_dir, wavs, texts, 8, device=device)
    if device == "cuda":
        torch.cuda.empty_cache()  # the demo's trials need the memory the encoders held
    report.add(
        "prepare",
        f"extraction of {len(wavs)} demo utterances, utterances / s ({label}, {device})",
        f"audio {1 / per_utt['audio']:.1f}; text {1 / per_utt['text']:.1f}",
    )
    minutes = 13_462 * (per_utt["audio"] + per_utt["text"]) / 60
    report.add("prepare", "KEMDy20's 13,462 utterances, extrapolated", f"{minutes:.1f} min")


def step_demo(report: Report, tmp: Path) -> None:
    """The README's sweep and finalize, through the command line, in a fresh home."""
    plan = report.plan
    tmp.mkdir(parents=True, exist_ok=True)
    env = {**_env(), "CASE_TUNE_HOME": str(tmp / "home"), "MPLBACKEND": "Agg"}
    common = ["--results-dir", str(tmp / "results")]
    sweep = [sys.executable, "-m", "search.run", "--space", "case", "--name", "gpu-demo"]
    sweep += [*common, "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}", *plan.demo_flags]
    final = [sys.executable, "-m", "search.finalize", "--sweep", "gpu-demo", *common]
    final += list(plan.finalize_flags)
    times = {}
    for label, cmd in (("sweep", sweep), ("finalize", final)):
        t0 = time.perf_counter()
        code, stdout, stderr = _run_group(cmd, tmp, env, plan.demo_timeout)
        times[label] = time.perf_counter() - t0
        if code:
            print(stdout[-3000:], stderr[-3000:], file=sys.stderr)
            raise RuntimeError(f"{label} exited {code}")
    pick = _top(tmp / "results" / "gpu-demo" / "best_configs.yaml")
    cpu = _top(ROOT / "results" / "demo" / "best_configs.yaml")
    same = (pick["trial_number"], pick["model"]) == (cpu["trial_number"], cpu["model"])
    trials = "24" if not plan.dry else plan.demo_flags[1]
    report.add(
        "demo",
        f"{trials}-trial sweep; finalize ({'2 x 2' if not plan.dry else '1 x 1'})",
        f"{times['sweep']:.0f} s; {times['finalize']:.0f} s",
    )
    report.add(
        "demo",
        "its pick vs the CPU run's (results/demo)",
        f"trial {pick['trial_number']} {pick['model']} vs trial {cpu['trial_number']} "
        f"{cpu['model']}" + (" (same)" if same else ""),
    )


def _run_group(cmd: list[str], cwd: Path, env: dict, timeout: int) -> tuple[int, str, str]:
    """Run ``cmd`` in its own process group; on timeout the group (its Ray runtime too) is
    killed, so a late step leaves nothing on the GPU."""
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise RuntimeError(f"{cmd[2]} ran past {timeout} s") from None
    return proc.returncode, stdout, stderr


def _top(path: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(path.read_text())["top"][0]


# -- the table -------------------------------------------------------------------------------
def machine_line(plan: Plan) -> str:
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        driver = _nvidia_smi("driver_version")
        gpu = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, driver {driver}"
    else:
        gpu = "no CUDA device (dry run on the CPU)"
    return (
        f"{gpu}; torch {torch.__version__} (CUDA {torch.version.cuda}); "
        f"{os.cpu_count()} CPUs; Python {platform.python_version()}"
    )


def _nvidia_smi(query: str) -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout
        return out.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"


def render(report: Report, line: str) -> str:
    plan = report.plan
    title = "GPU check" + (" — dry run on the CPU, small sizes" if plan.dry else "")
    sizes = plan.sizes
    lines = [
        f"## {title} (`python -m bench.gpu_check`)",
        "",
        f"Machine: {line}. Store: {plan.utterances:,} synthetic utterances of "
        f"{sizes['max_frames']} x {sizes['audio_dim']} audio and {sizes['max_tokens']} x "
        f"{sizes['text_dim']} text (fp16), case-compressing, batch 64, one warm-up epoch then "
        f"{plan.epochs} timed. Steps took "
        + ", ".join(f"{k} {v:.0f} s" for k, v in report.seconds.items())
        + ".",
        "",
        "| step | figure | value | target | met |",
        "|---|---|---|---|---|",
    ]
    for r in report.rows:
        met = {True: "yes", False: "**no**", None: "—"}[r.ok]
        lines.append(f"| {r.step} | {r.figure} | {r.value} | {r.target or '—'} | {met} |")
    if plan.dry:
        lines += [
            "",
            "A dry run proves the script, not the GPU: targets are judged only on a GPU.",
        ]
    return "\n".join(lines)


STEPS = ("tests", "packing", "split", "prepare", "demo")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, small sizes (default w/o CUDA)")
    ap.add_argument("--steps", default=",".join(STEPS), help=f"comma list of {', '.join(STEPS)}")
    ap.add_argument("--no-write", action="store_true", help="print only; leave results/bench.md")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(trial_epochs(**json.loads(args.child))))
        return 0
    import torch

    steps = [s for s in args.steps.split(",") if s]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        print(f"gpu_check: unknown --steps {', '.join(unknown)}; choose from {STEPS}")
        return 2
    plan = Plan.for_machine(args.dry_run or not torch.cuda.is_available())
    report = Report(plan)
    line = machine_line(plan)
    print(f"gpu_check: {line}", flush=True)
    failed = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        for name in steps:
            print(f"gpu_check: {name} ...", flush=True)
            t0 = time.perf_counter()
            try:
                run_step(name, report, Path(tmp))
            except Exception as exc:  # one step's failure is a row, not the end of the check
                failed.append(name)
                report.add(name, "failed", re.sub(r"\s+", " ", f"{type(exc).__name__}: {exc}"))
            report.seconds[name] = time.perf_counter() - t0
    text = render(report, line)
    from bench.report import publish

    publish("gpu-check-dry" if plan.dry else "gpu-check", text, write=not args.no_write)
    return 1 if failed else 0


def run_step(name: str, report: Report, tmp: Path) -> None:
    if name == "tests":
        step_tests(report)
    elif name in ("packing", "split"):
        store = write_store(tmp, report.plan)
        (step_packing if name == "packing" else step_split)(report, store)
    elif name == "prepare":
        step_prepare(report, tmp / "prepare")
    else:
        step_demo(report, tmp / "demo")


def write_store(tmp: Path, plan: Plan) -> Path:
    """A synthetic store of the plan's sizes, all rows in train (written once per check)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from model_helpers import make_synthetic_store

    if (tmp / "store.path").exists():
        return Path((tmp / "store.path").read_text())
    (tmp / "store").mkdir(exist_ok=True)
    path = make_synthetic_store(
        tmp / "store",
        n=plan.utterances,
        sessions=10,
        val_sessions=(),
        test_sessions=(),
        **plan.sizes,
    )
    (tmp / "store.path").write_text(str(path))
    return Path(path)


if __name__ == "__main__":
    sys.exit(main())
