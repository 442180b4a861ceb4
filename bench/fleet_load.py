"""Fleet load benchmark (issue 11, item 6): mixed chat and feedback traffic.

Concurrent clients send chats and thumbs (``--votes-every 3``: three chats, then a vote
on one of the replies just received, each reply voted once) for a fixed time against:

  sqlite-1   hitl serve on SQLite, one process (the learner inside)
  sqlite-2   hitl serve --workers 2 on SQLite: refused by design, tried and shown as such
  pg-1       hitl serve on PostgreSQL, one process (the learner inside)
  pg-2       hitl serve --workers 2 on PostgreSQL: two workers and a learner process

The upstream is a fixed ``chat.completion`` from a small aiohttp server started here;
the load comes from another process (aiohttp, uvloop). Nothing is pinned: the load, the
upstream, PostgreSQL and the gateway share this machine's two cores, which is why the
figure held is CPU per request (the gateway's processes, all of them, user + system from
/proc) rather than requests/s. Every run gets a fresh database and gateway, warms up
for a few seconds, then is measured; rounds are interleaved (each round runs every
configuration, in alternating order) and the tables show medians.

After each run the benchmark counts the stored rows: ``exchange`` must hold every chat
answered 2xx and ``feedback`` every vote answered 2xx (one per reply, so the counts
compare exactly). A 2xx with no row is a lost acknowledgement. It then waits (up to
10 s) for every serving process's model to have learned every stored label (``/healthz``)
and reports labels that fell below the learner's newest learned id without being learned.

Criterion (issue 11): pg-2's CPU per request at most 1.1 x pg-1's (medians), and no
acknowledgement lost. Exit status: 0 both hold, 1 acknowledgements lost, 3 the CPU
criterion does not hold (nothing lost), 2 could not be measured.

    python bench/fleet_load.py                   # 3 rounds x 20 s, 16 clients (~6 min)
    python bench/fleet_load.py --quick           # one 3-second round, a smoke test
    python bench/fleet_load.py --clients 32 --duration 30 --configs pg-1,pg-2
    python bench/fleet_load.py --json            # the figures as JSON on the last line

Needs a PostgreSQL it may create a database on (``--pg``, default
postgresql://postgres@127.0.0.1:5432/postgres); the database is dropped afterwards.

This file is the entry point; the benchmark is the package ``fleet/`` beside it:
``children`` (the upstream and the load, run as ``fleet_load.py --upstream PORT`` and
``--load URL``), ``procfs`` (CPU from /proc), ``stores`` (PostgreSQL and SQLite
bookkeeping), ``sample`` and ``run`` (one run), ``summary`` (medians, verdict, tables)
and ``cli`` (the command line).
"""

from __future__ import annotations

import sys

from fleet.cli import main

if __name__ == "__main__":
    sys.exit(main())
