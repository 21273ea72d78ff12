"""The one error of the experiments package, and the one-line form a bad registration takes."""


class RegistryError(ValueError):
    """A bad study name, scale, grid or registration; the message names the value and what is allowed."""


def refuse(study: str, field: str, value: object, allowed: str) -> RegistryError:
    """The one-line error for a bad registration: the study, the field, the value and what is allowed."""
    shown = repr(value).replace("\n", " ")
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return RegistryError(f"study {study!r}: {field}={shown} is not allowed; {allowed}")
