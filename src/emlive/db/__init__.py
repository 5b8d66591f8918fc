"""The data plane: Django models of projects, sessions, exposures and their results.

Configure Django first with :func:`emlive.db.setup.setup_database`; only then import
``emlive.db.models``, ``emlive.db.store`` (the controller's writes), ``emlive.db.queries``
(reads) or ``emlive.db.export`` (RELION STAR files). This package itself imports nothing
from Django, so ``import emlive.db.setup`` is always safe.
"""
