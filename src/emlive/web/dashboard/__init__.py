"""The dashboard: Django templates + htmx, Plotly from the ``plotly`` wheel."""
