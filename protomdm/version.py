"""The package name and version as outputs record them (one place: the package, DICOM outputs and checkpoints read
it)."""

__version__ = "0.1.0"

SOFTWARE = "protomdm"
