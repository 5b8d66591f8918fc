"""Where results go besides emlive's own database (DESIGN §6), each written from the database,
which stays the truth: the Appion database, exports other programs import (cryoSPARC's ``.cs``
files), session tables as DataFrames, and publish-ready datasets."""
