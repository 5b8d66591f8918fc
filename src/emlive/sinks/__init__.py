"""Where results go besides emlive's own database (DESIGN §6): exports other programs import
(cryoSPARC's ``.cs`` files), session tables as DataFrames and publish-ready datasets, each written
from the database, which stays the truth; and the Appion database, which classic Appion's drop-in
commands (``emlive.appion``) write from their workers' results as classic Appion does (its
database is their record of what is done, docs/leginon.md)."""
