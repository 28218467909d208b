"""GridHub's local stack without Docker: a real Kafka broker (KRaft), PostgreSQL and Mosquitto on loopback.

Run with ``python -m stack up|down|status`` (the Makefile does this for you). Every process the stack starts is
recorded by PID under the stack folder, so ``down`` stops exactly those and nothing else.
"""
