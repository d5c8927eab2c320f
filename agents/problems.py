"""RFC 9457 problem details: every error the API returns is `application/problem+json`.

The one implementation is runtime/http.py, shared with the ledger; this name stays for the
agent's modules that raise them.
"""

from runtime.http import PROBLEM_TYPE_BASE, ProblemError, problem

__all__ = ["PROBLEM_TYPE_BASE", "ProblemError", "problem"]
