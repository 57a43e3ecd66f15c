"""The input archive: recorded frames on disk (format.py), listed (`streamconv archive ls`)
and replayed through a model (capture/sources/archive.py, `streamconv replay`)."""
