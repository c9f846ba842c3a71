"""Benchmarks of the running suite: `make bench` (python -m bench) runs them all.

transfer: upload and download of a large JSONL dataset through the gateway, against nginx
serving and storing the same bytes on the same disk.
"""
