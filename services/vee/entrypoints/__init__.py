"""The VEE service's way in: the transactional consumer, the scheduler and the health API."""
