"""The agent's SQL, one module per aggregate (issue 11, deliverable 1); functions take the
caller's `sqlite3.Connection`, so a caller composes them into one transaction.

- `erasure`: what an erasure deletes and the confirmations and object deletions it leaves
  to do (docs/DESIGN.md "Erasure").
- `retention`: the retention purge and legal holds (docs/DESIGN.md "Retention").
"""

from . import erasure, retention

__all__ = ["erasure", "retention"]
