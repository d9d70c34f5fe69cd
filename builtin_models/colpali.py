"""(being written for issue 46)."""

from poolkit.contracts.hookspecs import hookimpl


@hookimpl
def poolkit_register_architectures(register):
    pass
