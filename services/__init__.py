"""GridHub services; each is one package and never imports another."""
