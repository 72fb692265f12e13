"""The GPU check (run by ``.ci/gpu`` on a machine with a CUDA device; at most 8 minutes in all).

Steps, in this order (the smoke run is last: it is the longest and least predictable, so it gets what is
left of the budget instead of crowding out the two steps whose cost is known):

1. ``cuda-tests``: ``python -m pytest tests/test_cuda.py`` (torch.cuda memory per phase, the CUDA-graph
   FVSBN, MADE and PixelCNN samplers against their torch references, one local worker per device). Passed only when every test
   ran and passed: a skipped test on a CUDA machine is a failure here.
2. ``timing``: a few training steps of every model, FVSBN's sampler at one batch and MADE's and
   PixelCNN's at batch 1 (compiled on the CPU, CUDA graphs on CUDA), on the CPU and on CUDA (warm-up first, ``torch.cuda.synchronize`` around each timed call): median seconds per call on
   each device and their ratio (speedup = CPU median / CUDA median; above 1 the GPU is faster). The CPU
   side uses the benchmark's job thread count ($GENBENCH_THREADS, default 1) unless ``--cpu-threads``.
3. ``smoke-run``: ``python -m bench run --all --budget smoke --device cuda`` into ``OUT/smoke-run``;
   passed when it exits 0, writes report.md, and every job in jobs.csv is ``ok``.

The summary (``OUT/summary.json``, OUT = ``results/gpu-check`` unless ``--out``) holds the device, the
versions, each step's status and seconds, the smoke run's status per model and the timing table; it is
printed too. Exit 0 when every step passed, 1 otherwise (a step skipped for lack of time counts as not
passed). A step that would start with less than its minimum time left in the budget is recorded as
``skipped: over the 8-minute budget``. Without a CUDA device the check says so in one line and exits 0.

Everything but the steps' bodies is small plain functions, tested on a CPU (tests/test_gpu_check.py).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable, NamedTuple

REPO = Path(__file__).resolve().parents[1]
BUDGET_S = 8 * 60.0
RESERVE_S = 20.0  # kept back from every step: stopping a late subprocess (10 s grace) and the summary
STOP_GRACE_S = 10.0
DEFAULT_OUT = "results/gpu-check"
STEP_NAMES = ("cuda-tests", "timing", "smoke-run")
TAIL_CHARS = 3000


# --- arguments -------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=".ci/gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"folder for the summary and logs (default {DEFAULT_OUT})")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help="total seconds (default 480)")
    parser.add_argument("--only", type=_names, default=list(STEP_NAMES),
                        help=f"comma-separated steps to run (default all: {','.join(STEP_NAMES)})")
    parser.add_argument("--smoke-workers", type=int, default=None,
                        help="worker processes of the smoke run (default: min(4, cores / 2), at least one "
                             "per device)")
    parser.add_argument("--scaling", action="store_true",
                        help="keep the smoke run's scaling study (default: --no-scaling, for time)")
    parser.add_argument("--timing-steps", type=int, default=5, help="timed calls per case and device (default 5)")
    parser.add_argument("--warmup-steps", type=int, default=2, help="untimed calls first (default 2)")
    parser.add_argument("--case-seconds", type=float, default=5.0,
                        help="stop timing a case on a device after this many seconds of timed calls (default 5)")
    parser.add_argument("--fvsbn-batch", type=int, default=256, help="FVSBN sampling batch (default 256)")
    parser.add_argument("--cpu-threads", type=int, default=None,
                        help="torch threads on the CPU side of the timing (default: the jobs' thread count)")
    parser.add_argument("--models", type=_names, default=None, help="models to time (default: every model)")
    return parser.parse_args(argv)


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


# --- the budget ------------------------------------------------------------------------------------
class Budget:
    """Seconds left of the whole check, on ``clock`` (a fake one in the tests)."""

    def __init__(self, total_s: float, clock: Callable[[], float] = time.monotonic):
        self.total_s = float(total_s)
        self.clock = clock
        self.start = clock()

    def elapsed(self) -> float:
        return self.clock() - self.start

    def remaining(self) -> float:
        return self.total_s - self.elapsed()

    def skip_message(self) -> str:
        return f"skipped: over the {self.total_s / 60:g}-minute budget"


class Step(NamedTuple):
    name: str
    run: Callable[[float], dict]  # called with the seconds it may take; returns {"status", "detail", ...}
    limit_s: float  # the step's own cap
    min_s: float  # not started with less than this left


def step_timeout(step: Step, budget: Budget, reserve_s: float = RESERVE_S) -> float:
    """Seconds a step may take: its own cap, or what the budget has left less the reserve."""
    return max(0.0, min(step.limit_s, budget.remaining() - reserve_s))


def run_steps(steps: list[Step], budget: Budget, log=None) -> list[dict]:
    """Run the steps in order; one that would start with less than its ``min_s`` left is recorded as
    skipped (with the budget's message), and so is every later one that does not fit either."""
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    results = []
    for step in steps:
        allowed = step_timeout(step, budget)
        if allowed < step.min_s:
            detail = (f"{budget.skip_message()} ({budget.elapsed():.0f} s spent, {step.name} needs at least "
                      f"{step.min_s:.0f} s)")
            results.append({"step": step.name, "status": "skipped", "seconds": 0.0, "detail": detail})
            log(f"gpu check: {step.name}: {detail}")
            continue
        log(f"gpu check: {step.name} (up to {allowed:.0f} s) ...")
        started = budget.clock()
        try:
            result = dict(step.run(allowed))
        except Exception as exc:  # a broken step is a failed step; the next still runs
            result = {"status": "failed", "detail": f"{type(exc).__name__}: {exc}",
                      "traceback": traceback.format_exc()}
        if result.get("status") not in ("passed", "failed", "skipped"):
            result = {**result, "status": "failed", "detail": f"step returned status {result.get('status')!r}"}
        result = {"step": step.name, **result, "seconds": round(budget.clock() - started, 2)}
        results.append(result)
        log(f"gpu check: {step.name}: {result['status']} in {result['seconds']:.1f} s: {result.get('detail', '')}")
    return results


def exit_code(results: list[dict]) -> int:
    """0 when there were steps and every one passed; 1 otherwise (failed or skipped)."""
    return 0 if results and all(r.get("status") == "passed" for r in results) else 1


# --- subprocesses ----------------------------------------------------------------------------------
def child_env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def run_command(cmd: list[str], timeout_s: float, log_path: Path, env: dict | None = None) -> dict:
    """Run ``cmd`` in the repository root, output to ``log_path``; past ``timeout_s`` its process group
    gets SIGTERM, then SIGKILL after ``STOP_GRACE_S``. Returns exit code, whether it timed out, the tail."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env or child_env(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        timed_out = False
        try:
            proc.wait(timeout=max(1.0, timeout_s))
        except subprocess.TimeoutExpired:
            timed_out = True
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(proc.pid, signal.SIGKILL)  # leftovers of our own group (workers), if any
        proc.wait()
    return {"exit_code": proc.returncode, "timed_out": timed_out, "log": str(log_path),
            "output_tail": log_path.read_text(errors="replace")[-TAIL_CHARS:]}


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


# --- step 1: the CUDA tests ------------------------------------------------------------------------
def junit_counts(path: Path) -> dict:
    """Test counts of a pytest --junitxml file: tests, failures, errors, skipped (summed over suites)."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    keys = ("tests", "failures", "errors", "skipped")
    return {k: sum(int(s.get(k, 0)) for s in suites) for k in keys}


def pytest_verdict(exit_status: int | None, junit_path: Path, timed_out: bool = False) -> dict:
    """Passed only when pytest exited 0 having run at least one test, none failed, errored or skipped."""
    counts = junit_counts(junit_path) if Path(junit_path).is_file() else None
    problems = []
    if timed_out:
        problems.append("timed out")
    if exit_status != 0:
        problems.append(f"pytest exited {exit_status}")
    if counts is None:
        problems.append("no junit report")
    else:
        if counts["tests"] == 0:
            problems.append("no tests ran")
        problems += [f"{counts[k]} {k}" for k in ("failures", "errors", "skipped") if counts[k]]
    detail = "" if counts is None else (f"{counts['tests']} tests, {counts['failures']} failed, "
                                        f"{counts['errors']} errors, {counts['skipped']} skipped")
    return {"status": "failed" if problems else "passed",
            "detail": "; ".join(problems + ([detail] if detail else [])), "counts": counts}


def cuda_tests_step(out: Path) -> Callable[[float], dict]:
    def run(timeout_s: float) -> dict:
        junit = out / "cuda-tests.xml"
        junit.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "pytest", "tests/test_cuda.py", "-q", "-p", "no:cacheprovider",
               f"--junitxml={junit}"]
        ran = run_command(cmd, timeout_s, out / "cuda-tests.log")
        return {**pytest_verdict(ran["exit_code"], junit, ran["timed_out"]), **ran}

    return run


# --- step 3: the smoke run -------------------------------------------------------------------------
def job_statuses(jobs_csv: Path) -> dict[str, str]:
    """model (with ``#seed`` when a model has several seeds) -> status, from a run's jobs.csv."""
    with open(jobs_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    seeds: dict[str, int] = {}
    for r in rows:
        seeds[r["model"]] = seeds.get(r["model"], 0) + 1
    return {(r["model"] if seeds[r["model"]] == 1 else f"{r['model']}#{r['seed']}"): r["status"] for r in rows}


def smoke_verdict(exit_status: int | None, run_dir: Path, timed_out: bool = False) -> dict:
    """Passed when the run exited 0, wrote report.md, and jobs.csv lists jobs, every one ``ok``."""
    run_dir = Path(run_dir)
    problems = []
    if timed_out:
        problems.append("timed out")
    if exit_status != 0:
        problems.append(f"bench run exited {exit_status}")
    report = run_dir / "report.md"
    if not report.is_file():
        problems.append("no report.md")
    models = job_statuses(run_dir / "jobs.csv") if (run_dir / "jobs.csv").is_file() else {}
    if not models:
        problems.append("no jobs in jobs.csv")
    bad = {m: s for m, s in models.items() if s != "ok"}
    if bad:
        problems.append("not ok: " + ", ".join(f"{m} {s}" for m, s in bad.items()))
    ok = sum(s == "ok" for s in models.values())
    return {"status": "failed" if problems else "passed",
            "detail": "; ".join(problems + [f"{ok}/{len(models)} jobs ok"]),
            "models": models, "report": str(report) if report.is_file() else None}


def default_smoke_workers(devices: int, cores: int | None = None) -> int:
    cores = cores or os.cpu_count() or 1
    return max(1, devices, min(4, cores // 2))


def smoke_run_step(out: Path, workers: int, scaling: bool) -> Callable[[float], dict]:
    def run(timeout_s: float) -> dict:
        run_dir = out / "smoke-run"
        cmd = [sys.executable, "-m", "bench", "run", "--all", "--budget", "smoke", "--device", "cuda",
               "--out", str(run_dir), "--no-progress", "--fresh", "--workers", str(workers)]
        if not scaling:
            cmd.append("--no-scaling")
        ran = run_command(cmd, timeout_s, out / "smoke-run.log")
        return {**smoke_verdict(ran["exit_code"], run_dir, ran["timed_out"]), **ran, "workers": workers,
                "command": " ".join(cmd[1:])}

    return run


# --- step 2: timing, CPU against CUDA ---------------------------------------------------------------
def median_or_none(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def timing_row(what: str, cpu_times: list[float], cuda_times: list[float], **extra) -> dict:
    """One row of the timing table: the median seconds per call on each device and the speedup
    (CPU median / CUDA median; None when either side has no timings or CUDA's median is 0)."""
    cpu, cuda = median_or_none(cpu_times), median_or_none(cuda_times)
    speedup = cpu / cuda if cpu is not None and cuda else None
    return {"what": what, **extra, "cpu_median_s": cpu, "cuda_median_s": cuda,
            "speedup": None if speedup is None else round(speedup, 3),
            "cpu_calls": len(cpu_times), "cuda_calls": len(cuda_times)}


def time_calls(fn: Callable[[], object], sync: Callable[[], None], warmup: int, repeats: int, max_seconds: float,
               deadline: float, clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Seconds of each timed call of ``fn`` (synchronised before and after), after ``warmup`` untimed ones;
    at most ``repeats``, fewer once ``max_seconds`` of timed calls are spent or ``clock`` passes ``deadline``."""
    for _ in range(warmup):
        if clock() > deadline:
            return []
        fn()
    sync()
    times: list[float] = []
    while len(times) < repeats and clock() < deadline and sum(times) < max_seconds:
        start = clock()
        fn()
        sync()
        times.append(clock() - start)
    return times


def training_case(name: str, data):
    """``make(device)`` for one model: a fresh model (seed 0) on the device, its optimisers, batches made
    ahead; the call is one ``train_step`` as the trainer runs it."""
    def make(device, calls: int):
        import torch

        from bench.train.trainer import ShuffledBatches
        from models.registry import build

        torch.manual_seed(0)
        model = build(name, image_shape=data.image_shape).to(device)
        model.train()
        optimizers = model.configure_optimizers()
        batches = ShuffledBatches(data.train_images, data.train_labels, getattr(model, "batch_size", 64),
                                  model.track, device, torch.Generator().manual_seed(0))
        queue = [next(batches) for _ in range(calls)]
        return lambda: model.train_step(queue.pop() if len(queue) > 1 else queue[0], optimizers)

    return make


def fvsbn_sampling_case(batch: int, backend: str):
    def make(device, _calls: int):
        import torch

        from models.registry import build

        torch.manual_seed(0)
        model = build("fvsbn")
        with torch.no_grad():
            model.weight.normal_(0, 0.05)
        model = model.to(device).eval()
        return lambda: model.sample_with_conditionals(batch, backend=backend)

    return make


def autoregressive_sampling_case(name: str, batch: int):
    """MADE's or PixelCNN's default sampler (compiled on the CPU, a CUDA-graph replay on CUDA) at ``batch``."""
    def make(device, _calls: int):
        import torch

        from models.registry import build

        torch.manual_seed(0)
        model = build(name).to(device).eval()
        return lambda: model.sample_with_conditionals(batch, method="auto")

    return make


def timing_step(args, devices: dict | None = None) -> Callable[[float], dict]:
    """``devices``: the table's columns -> the device timed under each (a CPU-only sanity run can pass
    ``{"cpu": "cpu", "cuda": "cpu"}``)."""
    devices = devices or {"cpu": "cpu", "cuda": "cuda"}

    def run(timeout_s: float) -> dict:
        import torch

        from bench.data.datasets import load_dataset
        from bench.config.job import job_threads
        from bench.instruments.timing import synchronize
        from models.autoregressive import fvsbn_kernels
        from models.registry import names

        deadline = time.perf_counter() + timeout_s
        threads = args.cpu_threads or job_threads()
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        data = load_dataset("mnist5k")
        cases = [(f"{n} train_step", {"kind": "train_step", "model": n}, training_case(n, data))
                 for n in (args.models or names())]
        for backend in ("auto", "blocked", "torch"):
            cases.append((f"fvsbn sample({args.fvsbn_batch}) backend={backend}",
                          {"kind": "sample", "model": "fvsbn", "backend": backend, "batch": args.fvsbn_batch},
                          fvsbn_sampling_case(args.fvsbn_batch, backend)))
        for name in ("made", "pixelcnn"):
            cases.append((f"{name} sample(1) method=auto", {"kind": "sample", "model": name, "backend": "auto",
                                                             "batch": 1}, autoregressive_sampling_case(name, 1)))
        if fvsbn_kernels.numba_available():
            fvsbn_kernels.warm_up()
        table, errors, untimed = [], [], []
        calls = args.warmup_steps + args.timing_steps
        try:
            for what, extra, make in cases:
                times, problems = {}, []
                for column, name in devices.items():
                    device, times[column], fn = torch.device(name), [], None
                    if time.perf_counter() >= deadline:  # not even built
                        problems.append(f"{column}: not timed, the step's time ran out")
                        continue
                    try:
                        fn = make(device, calls)
                        times[column] = time_calls(fn, lambda d=device: synchronize(d), args.warmup_steps,
                                                   args.timing_steps, args.case_seconds, deadline)
                        if not times[column]:
                            problems.append(f"{column}: not timed, the step's time ran out")
                    except Exception as exc:
                        problems.append(f"{column}: {type(exc).__name__}: {exc}")
                    del fn
                if torch.cuda.is_initialized():
                    torch.cuda.empty_cache()
                if extra["kind"] == "sample":
                    extra = {**extra, "backends": {column: _backend_used(extra["backend"], torch.device(name).type,
                                                                         extra["model"])
                                                   for column, name in devices.items()}}
                row = timing_row(what, times["cpu"], times["cuda"], **extra)
                if problems:
                    row["error"] = "; ".join(problems)
                    (untimed if all("ran out" in p for p in problems) else errors).append(what)
                table.append(row)
        finally:
            torch.set_num_threads(before)
        problems = ([f"failed: {', '.join(errors)}"] if errors else []) + \
                   ([f"not timed (time ran out): {', '.join(untimed)}"] if untimed else [])
        return {"status": "failed" if problems else "passed",
                "detail": "; ".join(problems) or f"{len(table)} cases timed on cpu ({threads} threads) and cuda",
                "table": table, "cpu_threads": threads}

    return run


def _backend_used(backend: str, device: str, model: str = "fvsbn") -> str:
    if backend != "auto":
        return backend
    if device == "cuda":
        return "cuda-graph"
    from models.autoregressive import fvsbn_kernels

    if not fvsbn_kernels.numba_available():
        return "torch" if model == "fvsbn" else "cached"
    return "numba" if model == "fvsbn" else "compiled"


# --- the plan, the summary, the command ------------------------------------------------------------
def plan(args, out: Path, devices: int = 1) -> list[Step]:
    workers = args.smoke_workers or default_smoke_workers(devices)
    steps = {
        "cuda-tests": Step("cuda-tests", cuda_tests_step(out), limit_s=150.0, min_s=30.0),
        "timing": Step("timing", timing_step(args), limit_s=150.0, min_s=30.0),
        "smoke-run": Step("smoke-run", smoke_run_step(out, workers, args.scaling), limit_s=420.0, min_s=60.0),
    }
    unknown = [n for n in args.only if n not in steps]
    if unknown:
        raise SystemExit(f"gpu check: unknown step(s) {', '.join(unknown)}; steps: {', '.join(STEP_NAMES)}")
    return [steps[n] for n in STEP_NAMES if n in args.only]


def environment() -> dict:
    import torch

    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "host": platform.node(), "cpu_count": os.cpu_count(), "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        info.update(device=torch.cuda.get_device_name(0), device_count=count,
                    devices=[torch.cuda.get_device_name(i) for i in range(count)],
                    device_memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
                    cudnn=torch.backends.cudnn.version(),
                    cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"))
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                            text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info


def build_summary(env: dict, results: list[dict], budget: Budget) -> dict:
    """The JSON summary: environment, each step (status, seconds, detail, what it found), the smoke run's
    status per model and the timing table lifted to the top."""
    lifted = {"smoke_models": {}, "timing": []}
    steps = []
    for r in results:
        r = dict(r)
        if r["step"] == "smoke-run":
            lifted["smoke_models"] = r.pop("models", {})
        if r["step"] == "timing":
            lifted["timing"] = r.pop("table", [])
        steps.append(r)
    return {"passed": exit_code(results) == 0, **env, "budget_s": budget.total_s,
            "elapsed_s": round(budget.elapsed(), 1), "steps": steps, **lifted}


def write_summary(summary: dict, out: Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "summary.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path


def no_cuda_message(torch_version: str, available: bool) -> str:
    return f"gpu check: no CUDA device here (torch {torch_version}, cuda available: {available}); nothing to run"


def main(argv=None) -> int:
    args = parse_args(argv)
    budget = Budget(args.budget_s)  # from here: torch's import counts against the 8 minutes
    import torch

    if not torch.cuda.is_available():
        print(no_cuda_message(torch.__version__, torch.cuda.is_available()))
        return 0
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    results = run_steps(plan(args, out, env.get("device_count", 1)), budget)
    summary = build_summary(env, results, budget)
    path = write_summary(summary, out)
    print(json.dumps(summary, indent=2, default=str))
    code = exit_code(results)
    print(f"gpu check: {'passed' if code == 0 else 'FAILED'}; summary at {path}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
