"""The ``ray`` entry of the backend registry, which imports Ray only when ``backend=ray`` is chosen.

Importing :mod:`sim.backends` must stay cheap and must work where Ray is not installed (it is the
optional extra ``gossipsoup[ray]``), so the registry holds this factory instead of the class.
"""

from __future__ import annotations

from sim.errors import ConfigError


def make_ray_backend(**options):
    """A :class:`~sim.backends.ray_backend.RayBackend`; ConfigError naming the extra when Ray is missing."""
    try:
        import ray  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            "backend.name",
            "ray",
            'an installed Ray: pip install "gossipsoup[ray]"',
            f"Ray cannot be imported here ({exc}); the other backends need no extra.",
        ) from None
    from .ray_backend import RayBackend

    return RayBackend(**options)
