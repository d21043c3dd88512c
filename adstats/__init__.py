"""adstats — ad efficiency statistics on a lambda architecture (batch + speed + serving)."""

__version__ = "0.1.0"
