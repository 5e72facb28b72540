"""Refresh the regression corpus tests/fuzz/corpus/<target> after a fuzzing campaign.

``python tests/fuzz/merge.py [TARGET...]`` (default: every harness) merges the corpus, the
campaign's inputs (build/fuzz/<target>/corpus) and the seeds with libFuzzer's
``-set_cover_merge=1`` (the smallest set of inputs with every feature they reach together), drops
the inputs that hit a known bug (the `bug-*` files stand for those), and replaces the corpus's
other files with the result. A merged input that fails in any other way stops it: that is a new
bug to look at first.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import harness

MAX_FILES = 200  # keep `make test` quick


def merge(target: str) -> None:
    corpus = harness.CORPUS_DIR / target
    corpus.mkdir(parents=True, exist_ok=True)
    mod = importlib.import_module(f"fuzz_{target}")
    with tempfile.TemporaryDirectory(prefix=f"merge-{target}-") as tmp:
        old, out = Path(tmp) / "old", Path(tmp) / "merged"
        old.mkdir()
        out.mkdir()
        for f in corpus.iterdir():
            if f.is_file() and not f.name.startswith("bug-"):
                shutil.copy(f, old / f.name)
        inputs = [str(old)]
        campaign = harness.WORK_DIR / target / "corpus"
        if campaign.is_dir():
            inputs.append(str(campaign))
        cmd = [sys.executable, str(harness.FUZZ_DIR / f"fuzz_{target}.py"), "-set_cover_merge=1",
               str(out), *inputs]
        run = subprocess.run(cmd, env={**os.environ, "FUZZ_IGNORE_KNOWN": "1"},
                             capture_output=True, text=True, check=False)
        if run.returncode != 0:
            sys.stderr.write(run.stderr[-4000:])
            raise SystemExit(f"merge {target}: libFuzzer exited {run.returncode}")
        keep, known = [], 0
        for f in sorted(out.iterdir()):
            try:
                mod.test_one_input(f.read_bytes())
            except Exception as exc:
                if harness.known_bug(exc, mod.KNOWN_BUGS) is None:
                    raise SystemExit(f"merge {target}: {f.name} fails: {exc!r} (new bug?)") from exc
                known += 1
                continue
            keep.append(f)
        if len(keep) > MAX_FILES:
            print(f"merge {target}: {len(keep)} inputs, keeping the {MAX_FILES} smallest")
            keep = sorted(keep, key=lambda f: (f.stat().st_size, f.name))[:MAX_FILES]
        for f in corpus.iterdir():
            if f.is_file() and not f.name.startswith("bug-"):
                f.unlink()
        for f in keep:
            shutil.copy(f, corpus / f.name)
    bugs = sum(1 for f in corpus.iterdir() if f.name.startswith("bug-"))
    print(f"merge {target}: {len(keep)} inputs (+{bugs} bug-* files; {known} merged inputs "
          f"dropped for hitting a known bug)")


def main(targets: list[str]) -> None:
    if not targets:
        targets = sorted(p.stem.removeprefix("fuzz_") for p in harness.FUZZ_DIR.glob("fuzz_*.py"))
    for target in targets:
        merge(target)


if __name__ == "__main__":
    main(sys.argv[1:])
