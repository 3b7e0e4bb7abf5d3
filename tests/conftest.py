"""Suite-wide settings: Hypothesis without per-example deadlines (CI machines are slow and shared)."""

from hypothesis import HealthCheck, settings

settings.register_profile("weightzip", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("weightzip")
