"""vpopbull: put a bulletin (one message file) into the Maildir of every user of some domains."""
from __future__ import annotations

import sys

from vpopmail.api.bulletin import (COPY, DELIVERED, FAILED, HARD_LINK, LISTED, OVER_QUOTA, SYMLINK,
                               Bulletin, Message, Progress, read_exclude, select_domains)
from vpopmail.cli.common import UsageError, error, getopt, open_api, print_version, run
from vpopmail.errors import DomainDoesNotExist, explain

USAGE = """\
usage: vpopbull [options] [virtual_domain] [...]
       -v (print version number)
       -V (verbose)
       -f email_file (file with message contents)
       -e exclude_email_addr_file (list of addresses to exclude)
       -n (don't mail. Use with -V to list accounts)
       -c (default, copy file)
       -h (use hard links)
       -s (use symbolic links)
       no virtual_domain: every domain in users/assign
"""
METHODS = {"c": COPY, "h": HARD_LINK, "s": SYMLINK}
#: a progress bar (on a terminal) from this many users on
PROGRESS_FROM = 200


def could_not_open(path: str, exc: OSError) -> int:
    print(f"Could not open file {path}: {exc.strerror}")
    return 255


def main(argv: list[str] | None = None, *, config: str | None = None) -> int:
    def body() -> int:
        raw = sys.argv[1:] if argv is None else argv
        if not raw:
            raise UsageError("")
        options, domains = getopt(raw, "Vvcshnf:e:")
        method, verbose, dry_run = COPY, False, False
        email_file = exclude_file = None
        for letter, value in options:
            if letter == "v":
                print_version()
            elif letter == "V":
                verbose = True
            elif letter == "n":
                dry_run = True
            elif letter == "f":
                email_file = value
            elif letter == "e":
                exclude_file = value
            else:
                method = METHODS[letter]
        if email_file is None and not dry_run:
            if options and all(letter == "v" for letter, _ in options) and not domains:
                return 0  # just the version, as C
            raise UsageError("-f email_file is needed (or -n to list the accounts)")
        message = None
        if email_file is not None:
            try:
                message = Message.open(email_file)
            except OSError as exc:
                return could_not_open(email_file, exc)
        api = open_api(config)
        exclude: set[str] = set()
        if exclude_file is not None:
            try:
                exclude = read_exclude(api, exclude_file)
            except OSError as exc:
                return could_not_open(exclude_file, exc)
        bulletin = Bulletin(api, message, method, exclude, dry_run)
        planned = bulletin.plan(select_domains(api, domains))
        total = sum(len(users) for _, users in planned)
        progress = Progress(total) if Progress.wanted(total, PROGRESS_FROM) else None
        label = ""

        def report(address: str, outcome: str, detail: str) -> None:
            line = ""
            if outcome == OVER_QUOTA:
                verb = "would not be" if dry_run else "not"
                line = f"{address}: over quota ({detail}), {verb} delivered"
            elif outcome == FAILED:
                line = f"Error: {address}: {detail}"
            elif verbose and outcome in (DELIVERED, LISTED):
                line = address
            if line:
                if progress:
                    progress.clear()
                print(line, flush=bool(progress))
            if progress:
                progress.step(label)

        removed = False
        for entry, users in planned:
            label = entry.real_domain
            before = dict(bulletin.summary.counts)
            try:
                bulletin.send(entry, users, report)
            except DomainDoesNotExist as exc:  # a vdeldomain since the run began: the
                if progress:  # other domains still get the bulletin
                    progress.clear()
                error(explain(exc, "vpopbull"))
                removed = True
                continue
            if verbose:
                done = {k: v - before[k] for k, v in bulletin.summary.counts.items()}
                if progress:
                    progress.clear()
                sent = done[LISTED] if dry_run else done[DELIVERED]
                print(f"{entry.real_domain}: {sent} {'to send' if dry_run else 'delivered'}, "
                      f"{done['excluded']} excluded, {done[OVER_QUOTA]} over quota"
                      + (f", {done[FAILED]} failed" if done[FAILED] else ""), flush=True)
        if progress:
            progress.finish(label)
        if message is not None:
            message.close()
        return 1 if bulletin.summary.failures or removed else 0

    return run(body, USAGE)
