"""Dev-only tooling on top of the local stack: ``make run``, the meter simulator, dev credentials.

Nothing in libs/, services/ or ops/ imports it (the import contract); the wheel and the image leave it out.
"""
