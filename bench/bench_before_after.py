"""Benchmark: the direct Python vdelivermail and vchkpw of an earlier commit against this tree.

    .venv/bin/python bench/bench_before_after.py BASE [--rounds 5] [--loop 40]

Run as root. Checks BASE out into a temporary git worktree, installs both trees with
packaging/install (--no-frontends: the programs qmail-local and qmail-popup would run when no
server is up) into bench/work/before-after/, adds example.com and alice (100G quota, SHA-512
password) to each, then times in interleaved rounds a --loop of back-to-back runs from one
shell: a 4 KB delivery as uid 89 from a seekable file with qmail-local's environment, and a
checkpassword login as root (fd 3, exec /bin/true). A refactoring must not slow the hot paths:
this is the figure for that. Writes the "Before/after" section of bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from bench_delivery import HEADER, qmail_local_env  # noqa: E402
from common import (POP_ENV, REPO, RESULTS, WORK, add_alice, machine_line,  # noqa: E402
                    owner, replace_section, shell_loop)


class Site:
    """One tree installed with a domain, a user, a 4 KB message and its credentials."""

    def __init__(self, repo: Path, here: Path) -> None:
        user, group, uid, gid = owner()
        shutil.rmtree(here, ignore_errors=True)
        here.mkdir(parents=True)
        here.chmod(0o755)
        prefix = here / "vpopmail"
        subprocess.run([sys.executable, str(repo / "packaging" / "install"), "--prefix",
                        str(prefix), "--qmaildir", str(here / "qmail"), "--user", user,
                        "--group", group, "--venv", sys.prefix, "--no-frontends"],
                       check=True, capture_output=True)
        self.bin = prefix / "bin"
        self.domain_dir = add_alice(self.bin)[0]
        subprocess.run(["chown", "-R", f"{user}:{group}", str(self.domain_dir)], check=True)
        self.message = here / "msg4096"
        self.message.write_bytes(HEADER + b"x" * (4095 - len(HEADER)) + b"\n")
        self.message.chmod(0o644)
        self.credentials = here / "fd3"
        self.credentials.write_bytes(b"alice@example.com\0pw\0\0")
        os.chown(here, uid, gid)  # the config caches are written beside the config
        self.ids = (uid, gid)

    def delivery(self, loop: int) -> float:
        return shell_loop([str(self.bin / "vdelivermail"), "", "bounce-no-mailbox"],
                          qmail_local_env(self.domain_dir), self.domain_dir, loop, self.ids,
                          stdin=self.message)

    def login(self, loop: int) -> float:
        return shell_loop([str(self.bin / "vchkpw"), "/bin/true"], POP_ENV, None, loop,
                          fd3=self.credentials)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", help="the earlier commit")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--loop", type=int, default=40)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("run as root (deliveries as uid 89, logins as root)")
    base = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", args.base],
                          check=True, capture_output=True, text=True).stdout.strip()
    here = WORK / "before-after"
    with tempfile.TemporaryDirectory() as scratch:
        tree = Path(scratch) / "tree"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), base],
                       check=True, capture_output=True)
        try:
            sites = {f"before ({base})": Site(tree, here / "before"),
                     "after (this tree)": Site(REPO, here / "after")}
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)],
                           check=True, capture_output=True)
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for label, site in sites.items():
            times.setdefault(("4 KB delivery, fsync", label), []).append(site.delivery(args.loop))
            times.setdefault(("SHA-512-crypt login", label), []).append(site.login(args.loop))
    lines = ["## Before/after: the direct programs of two commits (`bench/bench_before_after.py`)",
             "", machine_line(args.rounds, "-"), "",
             f"Per run, {args.loop} runs back to back from one shell, {args.rounds} rounds "
             "interleaved; the programs Python runs when no vpopmail-server is up.", "",
             "| what | tree | median | fastest round |", "| --- | --- | ---: | ---: |"]
    lines += [f"| {what} | {tree_label} | {statistics.median(v) * 1000:.2f} ms | "
              f"{min(v) * 1000:.2f} ms |" for (what, tree_label), v in times.items()]
    replace_section(RESULTS, "## Before/after", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
