"""What agents/ and broker/ share at run time besides the pure protocol core in keys/.

keys/ stays pure (no clock, no files, no network); what every service needs from its
surroundings, starting with the clock, lives here once.
"""

from . import clock

__all__ = ["clock"]
