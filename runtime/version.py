"""The one version of NRM Exchange: the installed package's (pyproject.toml `version`).

Every service reports it: `nrm --version`, `"version"` in each `/healthz`, the `version`
label of the `nrm_agent_info`, `nrm_ledger_info` and `nrm_bus_info` metrics. What may run
together across versions is in docs/RUNBOOK.md, "Versions and upgrades"; what changed in
each, in CHANGELOG.md.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

#: The distribution whose metadata holds the version (pyproject.toml `[project] name`).
DISTRIBUTION = "nrm-exchange"

try:
    VERSION: str = version(DISTRIBUTION)
except PackageNotFoundError:  # a source tree on PYTHONPATH that was never installed
    VERSION = "0+unknown"

__all__ = ["DISTRIBUTION", "VERSION"]
