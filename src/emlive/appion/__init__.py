"""Drop-in replacements for classic Appion's commands (``makeDDAlignMotionCor2_UCSF.py``,
``ctffind4.py``, ``runJob.py``): classic flags and ``sinedon.cfg``, emlive's engines on Dask,
the Leginon database as source and the Appion database as sink (docs/leginon.md)."""
