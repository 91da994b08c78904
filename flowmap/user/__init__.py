"""Users' own models behind flowmap's net interface (docs/models.md): the spec, adapters, load checks."""

from flowmap.user.spec import PARAMETERISATIONS, TIMES, UserModelError, UserSpec

__all__ = ["PARAMETERISATIONS", "TIMES", "UserModelError", "UserSpec"]
