"""What agents/ and broker/ share at run time besides the pure protocol core in keys/.

keys/ stays pure (no clock, no files, no network); what every service needs from its
surroundings lives here once: the clock, supervised background loops, back-off, waiting
for a condition, expiry as health, group commit, atomic files, the key folder, problem+json
and bearer tokens, strict configuration (docs/DESIGN.md, "runtime/, as built"). Imports
only keys/.
"""

from . import clock

__all__ = ["clock"]
