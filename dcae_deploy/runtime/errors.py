"""The runtime's error types.

Every failure a user can cause (bad image, corrupt or foreign `.dcae` file,
broken bundle) is raised as a subclass of `DcaeError` whose message is one
line, so the CLI can print it and exit non-zero without a traceback.
"""


class DcaeError(Exception):
    """Base class: a one-line, user-facing reason."""


class BadInputError(DcaeError):
    """An input image or argument that cannot be coded."""


class CorruptStreamError(DcaeError):
    """A `.dcae` / `.bin` file that is malformed, truncated or fails its CRC."""


class DesyncError(CorruptStreamError):
    """The rANS decoder did not end where the encoder started: the decoder's
    entropy parameters differ from the encoder's, so the output would be noise."""


class FingerprintMismatchError(DcaeError):
    """The file was written by another numeric setup (bundle, precision or backend)."""


class BundleError(DcaeError):
    """A bundle directory that is missing files, altered, or of another format."""


class BackendUnavailableError(DcaeError):
    """A backend whose libraries or hardware are not present on this machine."""
