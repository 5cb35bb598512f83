"""The package version (one place: the package, DICOM outputs and checkpoints read it)."""

__version__ = "0.1.0"
