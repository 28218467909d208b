"""Operating GridHub: `make run` (the stack, the services and a meter simulator) and the `gridhub` command."""
