"""The pipe between master and workers, with no I/O: Goridge v3 frames and the messages they carry.

    frame.py      frames: encode, incremental decode, CRC
    messages.py   Request and Response (what the application sees) and their JSON heads

Both sides of the pipe import this package; nothing here knows about HTTP bytes or sockets.
"""
