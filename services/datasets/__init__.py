"""The datasets service: dataset storage and time-limited download tokens."""
