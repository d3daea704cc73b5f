"""The master process: one selectors loop, its clients, its workers and its operators.

Read server.py first: it builds the parts and wires them. The parts that decide without
doing I/O are pure modules here too (pool.py, lifecycle.py, jobs.py, supervisor.py,
metrics.py); the rest own descriptors in the loop.
"""
