"""`make mutants`: plant each bug of tools/mutants/*.patch, one at a time, and check a test catches it.

Each patch is one realistic single bug (an off-by-one bound, a plain `+=` for an `atomicAdd`, a
dropped `__syncthreads()`, a wrong Philox word, an inverted gradient option, ...), kept as a
one-hunk `git diff` preceded by a header that `git apply` ignores:

    Mutant: kmeans_update (CUDA): atomicAdd on the sums replaced by a plain +=
    Tests: python_tests/test_cuda_emu_races.py -k "kmeans_update"
    Needs: avx512          (optional: CPU paths (QUANTNOISE_CPU_ISA names) and/or `asan`)

For each patch the script applies it (`git apply`), rebuilds what its files need (the in-place
extension for csrc/cpu, csrc/ops.cpp, csrc/module.cpp; the emulated CUDA library for csrc/cuda and
csrc/emu, which python_tests/emu.py rebuilds with ninja when the tests load it; both for
csrc/include and csrc/host; nothing for Python), runs the patch's tests, and reverts it (always:
also on a failure or Ctrl-C; the tree is checked clean against the state it started from). A
mutant is `caught` when its tests fail, `SURVIVED` when they pass, `CRASHED` when the test process
dies of a signal (an allocator abort after an out-of-bounds write: luck, not a test; outside the
ASan run that counts as a failure), `BROKEN` when the patch no longer applies or does not compile.
Mutants whose path this machine cannot run (an ISA it lacks, or `asan` without `--asan`) are
`not run: <why>`. After the last one, what the mutants touched is rebuilt from the clean sources,
so the in-place build is the tree's.

Exit status: 1 if any mutant that ran survived, crashed or is broken, or the tree is not clean after.

    python tools/mutants.py                  # every mutant
    python tools/mutants.py -k kmeans,02-    # mutants whose file name contains one of the words
    python tools/mutants.py --list           # the list, run nothing
    python tools/mutants.py --asan           # `asan` mutants too, against the ASan build (slow)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MUTANTS = ROOT / "tools" / "mutants"
PY = os.environ.get("PYTHON") or sys.executable
ASAN_BUILD = ROOT / "build" / "asan"
ISAS = ("avx512", "avx2", "portable")


@dataclass
class Mutant:
    path: Path
    title: str
    tests: list[str]
    needs: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.stem

    def builds(self) -> set[str]:
        """What must be rebuilt when this mutant's files change: 'ext', 'emu', both or neither."""
        out: set[str] = set()
        for f in self.files:
            if f.startswith(("csrc/include/", "csrc/host/")):
                out |= {"ext", "emu"}
            elif f.startswith(("csrc/cuda/", "csrc/emu/")):
                out.add("emu")
            elif f.startswith("csrc/"):
                out.add("ext")
        return out


def parse(path: Path) -> Mutant:
    text = path.read_text()
    head = text.split("\ndiff --git ", 1)[0]
    fields = dict(re.findall(r"^(Mutant|Tests|Needs):[ \t]*(.*)$", head, re.M))
    if "Mutant" not in fields or "Tests" not in fields:
        raise SystemExit(f"{path.name}: the header needs 'Mutant:' and 'Tests:' lines")
    files = re.findall(r"^\+\+\+ b/(\S+)", text, re.M)
    return Mutant(path, fields["Mutant"], shlex.split(fields["Tests"]), fields.get("Needs", "").split(), files)


def run(cmd: list[str], env: dict | None = None, cwd: Path = ROOT, log: Path | None = None) -> int:
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.run(
            cmd, cwd=cwd, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT
        ).returncode
    finally:
        if log:
            out.close()


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


def cpu_isa_missing() -> dict[str, str]:
    """{isa: missing features} of this machine (the extension's own probe), '' when it runs."""
    code = "import json, quantnoise_kernels as q; print(json.dumps({i: q._C.cpu_isa_missing(i) for i in q.CPU_ISAS}))"
    code = code.replace("q.CPU_ISAS", repr(list(ISAS)))
    out = subprocess.run([PY, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def build(kinds: set[str], log: Path, asan: bool) -> int:
    """Rebuilds (ninja, incrementally) what `kinds` names, and its ASan twin when `asan`; 0 on success."""
    rc = 0
    if "ext" in kinds:
        env = {"MAX_JOBS": os.environ.get("MAX_JOBS", "1")}
        rc = rc or run([PY, "setup.py", "-q", "build_ext", "--inplace"], env=env, log=log)
        if asan and rc == 0 and (ASAN_BUILD / "lib").is_dir():
            env |= {"QUANTNOISE_CUDA": "0", "QUANTNOISE_SANITIZE": "1"}
            cmd = ["setup.py", "-q", "build_ext", "--build-lib", str(ASAN_BUILD / "lib"), "--build-temp"]
            rc = run([PY, *cmd, str(ASAN_BUILD / "temp")], env=env, log=log)
    if "emu" in kinds and rc == 0:
        # The tests would rebuild it on load; building here first tells a compile error from a failure.
        load = [PY, "-c", "import sys; sys.path.insert(0, 'python_tests'); import emu; emu.load()"]
        rc = run(load, log=log)
        if asan and rc == 0:  # the sanitized twin (build/quantnoise_emu_asan) the asan tests load
            rc = run(load, env=asan_env(), log=log)
    return rc


def asan_env() -> dict[str, str]:
    def lib(name: str) -> str:
        return subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()

    return {
        "QUANTNOISE_SANITIZE": "1",
        "LD_PRELOAD": f"{lib('libasan.so')} {lib('libstdc++.so')}",
        "ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1",
        "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
    }


def run_tests(m: Mutant, log: Path, asan: bool) -> int:
    args = ["-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *m.tests]
    if asan and "asan" in m.needs:
        tests = [a if not a.startswith("python_tests/") else str(ROOT / a) for a in args]
        return run([PY, *tests, "-o", "pythonpath="], env=asan_env(), cwd=ASAN_BUILD / "lib", log=log)
    return run([PY, *args], log=log)


def why_not_run(m: Mutant, missing: dict[str, str], asan: bool) -> str | None:
    for need in m.needs:
        if need in missing and missing[need]:
            return f"the {need} path cannot run here (this CPU lacks {missing[need]})"
        if need == "asan" and not asan:
            return "needs the ASan build: run with --asan (`make mutants ASAN=1`) after `make test-asan`"
        if need == "asan" and not (ASAN_BUILD / "lib").is_dir():
            return f"needs the ASan build in {ASAN_BUILD.relative_to(ROOT)}/lib: run `make test-asan` once"
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "-k",
        dest="select",
        default="",
        help="only mutants whose file name contains one of these (comma-separated) words",
    )
    ap.add_argument("--list", action="store_true", help="print the mutants and their tests, run nothing")
    ap.add_argument("--asan", action="store_true", help="also run the `asan` mutants against build/asan")
    ap.add_argument("--log", default=str(ROOT / "build" / "mutants"), help="one log per mutant here")
    args = ap.parse_args()

    words = [w for w in args.select.split(",") if w] or [""]
    mutants = [parse(p) for p in sorted(MUTANTS.glob("*.patch")) if any(w in p.stem for w in words)]
    if args.list:
        for m in mutants:
            print(f"{m.name}: {m.title}\n    {' '.join(m.files)} -> {shlex.join(m.tests)} {' '.join(m.needs)}")
        return 0
    if git("status", "--porcelain", "--untracked-files=no", "--", "csrc", "quantnoise_kernels", "python_tests"):
        print("mutants: csrc/, quantnoise_kernels/ or python_tests/ has uncommitted changes; commit or stash first")
        return 2
    logs = Path(args.log)
    logs.mkdir(parents=True, exist_ok=True)
    missing = cpu_isa_missing()
    start = time.monotonic()
    results: dict[str, str] = {}
    touched: set[str] = set()
    applied: Mutant | None = None

    def revert() -> None:
        nonlocal applied
        if applied is not None:
            subprocess.run(["git", "apply", "-R", str(applied.path)], cwd=ROOT, check=True)
            applied = None

    # A Ctrl-C (or a kill) reverts the planted bug before leaving.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        for m in mutants:
            reason = why_not_run(m, missing, args.asan)
            if reason:
                results[m.name] = f"not run: {reason}"
                print(f"{m.name:44s} not run: {reason}", flush=True)
                continue
            log = logs / f"{m.name}.log"
            log.unlink(missing_ok=True)
            t0 = time.monotonic()
            if subprocess.run(["git", "apply", "--check", str(m.path)], cwd=ROOT, capture_output=True).returncode:
                results[m.name] = "BROKEN: the patch no longer applies (regenerate it)"
                print(f"{m.name:44s} BROKEN: the patch no longer applies", flush=True)
                continue
            subprocess.run(["git", "apply", str(m.path)], cwd=ROOT, check=True)
            applied = m
            touched |= m.builds()
            if build(m.builds(), log, args.asan and "asan" in m.needs):
                verdict = results[m.name] = "BROKEN: does not compile (a mutant must build: fix the patch)"
            else:
                rc = run_tests(m, log, args.asan)
                if rc < 0 and not (args.asan and "asan" in m.needs):
                    # Killed by a signal (an allocator abort, a segfault): luck, not a test. A test
                    # must assert, or the mutant be marked `Needs: asan`.
                    verdict = f"CRASHED (signal {-rc}): caught by luck, not by an assertion"
                elif rc in (0, 5):
                    verdict = "SURVIVED" if rc == 0 else "SURVIVED (no test selected)"
                else:
                    verdict = "caught"
                results[m.name] = verdict
            revert()
            print(f"{m.name:44s} {verdict}  ({time.monotonic() - t0:.0f} s, log {log.relative_to(ROOT)})", flush=True)
    except KeyboardInterrupt:
        print("\nmutants: interrupted; reverting", flush=True)
        revert()
        # torch's JIT build (emu.load) leaves its lock behind when killed mid-build: the next load would wait on it.
        for lock in (ROOT / "build").glob("quantnoise_emu*/lock"):
            lock.unlink(missing_ok=True)
        return 130
    finally:
        revert()
        if touched:  # the build again from the clean sources
            rc = build(touched, logs / "rebuild-clean.log", args.asan)
            if rc:
                print("mutants: the rebuild from the clean tree FAILED (see build/mutants/rebuild-clean.log)")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "csrc", "quantnoise_kernels", "python_tests")
        if dirty:
            print(f"mutants: the tree is NOT clean after reverting:\n{dirty}")

    ran = [n for n, r in results.items() if not r.startswith("not run")]
    caught = [n for n in ran if results[n].startswith("caught")]
    survived = [n for n in ran if results[n].startswith("SURVIVED")]
    broken = [n for n in ran if results[n].startswith(("BROKEN", "CRASHED"))]
    not_run = [n for n, r in results.items() if r.startswith("not run")]
    print(f"{len(results)} planted, {len(caught)} caught", end="")
    print(f", {len(survived)} SURVIVED ({', '.join(survived)})" if survived else "", end="")
    print(f", {len(broken)} broken or crashed ({', '.join(broken)})" if broken else "", end="")
    print(f", {len(not_run)} not run ({', '.join(not_run)})" if not_run else "", end="")
    print(f"  [{time.monotonic() - start:.0f} s]")
    return 1 if survived or broken or dirty else 0


if __name__ == "__main__":
    sys.exit(main())
