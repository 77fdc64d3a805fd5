"""Errors a user can act on. Each one says what is wrong and, where there is one, how to fix it."""


class DataplaneError(Exception):
    """Base of every error the CLI reports as a one-paragraph message (no traceback)."""


class ScenarioError(DataplaneError):
    """A scenario (or manifest) is invalid: names the file, the field and what was expected."""

    def __init__(self, file, field, message):
        self.file, self.field, self.message = str(file), field, message
        super().__init__(f"{self.file}: {field}: {message}" if field else f"{self.file}: {message}")


class ScenarioErrors(ScenarioError):
    """Every error found in one pass over a file (as kubectl reports a manifest's): one line each,
    in file order. Its file, field and message are the first error's."""

    def __init__(self, errors: list[ScenarioError]):
        self.errors = errors
        first = errors[0]
        self.file, self.field, self.message = first.file, first.field, first.message
        lines = [str(e) for e in errors]
        Exception.__init__(self, lines[0] if len(lines) == 1 else
                           f"{len(lines)} errors:\n" + "\n".join(f"  {line}" for line in lines))


class PrerequisiteError(DataplaneError):
    """Something the machine lacks (root, bcc, headers, a mount, a tool); carries the fix."""

    def __init__(self, what, fix):
        self.what, self.fix = what, fix
        super().__init__(f"{what}\n  fix: {fix}")


class LabError(DataplaneError):
    """A lab cannot be built, found or torn down."""
