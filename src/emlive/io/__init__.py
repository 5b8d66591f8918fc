"""File formats at the edge of emlive: movies in, micrographs, tables and pictures out.

- :mod:`emlive.io.movie`: ``open_movie`` / ``read_movie`` / ``read_movie_header`` /
  ``check_movie_complete`` for MRC/MRCS, TIFF (incl. LZW) and EER.
- :mod:`emlive.io.gain`: gain references (MRC/TIFF), orientation, shape checks.
- :mod:`emlive.io.mrc`, :mod:`emlive.io.star`, :mod:`emlive.io.png`: atomic writers.
- :mod:`emlive.io.atomic`: the temp-name + fsync + rename primitive they share.
- :mod:`emlive.io.errors`: ``MovieFormatError`` and ``GainError`` (both ``ValueError``).

Submodules are imported explicitly (``from emlive.io.movie import open_movie``) so that
importing one format does not pull in the others' libraries.
"""
