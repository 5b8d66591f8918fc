"""Where exposures come from besides the folder watcher (DESIGN §6): the Leginon database."""
