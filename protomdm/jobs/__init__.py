"""The jobs behind the commands: each combines the library's layers into one piece of work (localize an image or a
folder, case reports, explain a plain classifier, the demo, the benchmark, the DICOM node)."""
