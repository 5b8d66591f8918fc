"""Where results go besides emlive's own database (DESIGN §6): the Appion database."""
